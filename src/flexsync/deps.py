"""FastAPI dependencies: the app context (flexsync.context) and the caller's scope from its API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from flexsync.context import AppContext
from flexsync.idempotency import writes
from flexsync.kit.errors import Unauthorized
from flexsync.tenancy.service import Scope, resolve_api_key


def get_db(request: Request) -> AppContext:
    db: AppContext = request.app.state.db
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


async def require_scope(request: Request, db: Annotated[AppContext, Depends(get_db)]) -> Scope:
    key = presented_api_key(request)
    if not key:
        raise Unauthorized("missing API key: send it in the x-api-key header or as a Bearer token")
    async with db.read() as session:
        scope = await resolve_api_key(session, key)
    if scope is None:
        raise Unauthorized("invalid or revoked API key")
    writes.note_environment(scope.environment_id)
    return scope


DB = Annotated[AppContext, Depends(get_db)]
AuthScope = Annotated[Scope, Depends(require_scope)]
