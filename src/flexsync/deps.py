"""Request dependencies: the process's database and the caller's scope from its API key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from flexsync.config import Settings
from flexsync.crypto import SecretBox
from flexsync.db import driver_transaction, read_session_factory, session_factory, transaction
from flexsync.kit.errors import Unauthorized
from flexsync.tenancy.service import Scope, resolve_api_key


@dataclass(slots=True)
class Database:
    """The process's shared resources: settings, the engine and its session factories, the secret box."""

    settings: Settings
    engine: AsyncEngine
    box: SecretBox
    # Sessions for units of work (`transaction`, or begun and ended by the caller) and for reading (`read`).
    sessions: async_sessionmaker[AsyncSession] = field(init=False)
    reads: async_sessionmaker[AsyncSession] = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = session_factory(self.engine)
        self.reads = read_session_factory(self.engine)

    def read(self) -> AsyncSession:
        """A session that only reads (db.read_session_factory), for `async with`: on SQLite it never waits for a
        writer."""
        return self.reads()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with transaction(self.sessions) as session:
            yield session

    @asynccontextmanager
    async def hot_transaction(self) -> AsyncIterator[AsyncSession]:
        """`transaction` for a hot path: on PostgreSQL held by the driver (db.driver_transaction)."""
        if self.engine.dialect.name != "postgresql":
            async with self.transaction() as session:
                yield session
            return
        async with driver_transaction(self.engine) as session:
            yield session


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def presented_api_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


async def require_scope(request: Request, db: Annotated[Database, Depends(get_db)]) -> Scope:
    key = presented_api_key(request)
    if not key:
        raise Unauthorized("missing API key: send it in the x-api-key header or as a Bearer token")
    async with db.read() as session:
        scope = await resolve_api_key(session, key)
    if scope is None:
        raise Unauthorized("invalid or revoked API key")
    return scope


DB = Annotated[Database, Depends(get_db)]
AuthScope = Annotated[Scope, Depends(require_scope)]
