"""The app context: what a process shares (settings, the engine and its session factories, the secret box),
and the one way to open a unit of work on it. Built once per process by `open_context`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from flexsync import crypto
from flexsync.config import Settings
from flexsync.crypto import SecretBox
from flexsync.db import create_engine, driver_transaction, read_session_factory, session_factory, transaction
from flexsync.idempotency import writes


@dataclass(slots=True)
class AppContext:
    """The process's shared resources. The request or job that uses it owns the transaction: services and
    repositories take the session it opens, they never open their own."""

    settings: Settings
    engine: AsyncEngine
    # The secret box once built (`box`): a command that never touches a secret never reads the encryption keys.
    loaded_box: SecretBox | None = None
    # Sessions for units of work (`transaction`, `step`, `hot_transaction`, `trial`) and for reading (`read`).
    sessions: async_sessionmaker[AsyncSession] = field(init=False)
    reads: async_sessionmaker[AsyncSession] = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = session_factory(self.engine)
        self.reads = read_session_factory(self.engine)

    @property
    def box(self) -> SecretBox:
        """Encrypts and decrypts the Stripe secrets (crypto.SecretBox), built from the settings on first use."""
        if self.loaded_box is None:
            self.loaded_box = crypto.secret_box(self.settings)
        return self.loaded_box

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session that only reads (db.read_session_factory): on SQLite it never waits for a writer. In a request
        whose write is held for its idempotency key's record, that write's session instead, so the answer shows
        what the request wrote."""
        pending = writes.pending_session()
        if pending is not None:
            yield pending
            return
        async with self.reads() as session:
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A unit of work that commits once at the end, or rolls back on any error. In a request made with an
        idempotency key, the request's write instead, which commits with the key's record once the answer is known
        (idempotency/writes.py)."""
        write = writes.keyed_write()
        if write is None:
            async with transaction(self.sessions) as session:
                yield session
            return
        async with write.unit_of_work() as session:
            yield session

    @asynccontextmanager
    async def step(self) -> AsyncIterator[AsyncSession]:
        """A unit of work that commits at its end even in a request made with an idempotency key: for a step
        other processes must see while the request goes on (a lease). Taken before the request's write begins
        (on SQLite it would otherwise wait for the request's own write lock)."""
        if writes.in_pending_write():
            raise RuntimeError("a step of its own inside the request's write")
        async with transaction(self.sessions) as session:
            yield session

    async def after_commit(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` once what the running request or job wrote has committed (at once, unless a request's
        write is held for its idempotency key's record: idempotency.writes.after_commit)."""
        await writes.after_commit(hook)

    @asynccontextmanager
    async def hot_transaction(self) -> AsyncIterator[AsyncSession]:
        """`transaction` for a hot path: on PostgreSQL held by the driver (db.driver_transaction)."""
        if self.engine.dialect.name != "postgresql":
            async with self.transaction() as session:
                yield session
            return
        async with driver_transaction(self.engine) as session:
            yield session

    @asynccontextmanager
    async def trial(self) -> AsyncIterator[AsyncSession]:
        """A unit of work that is always rolled back: its decisions are seen, never kept (a dry run)."""
        async with self.sessions() as session:
            outer = await session.begin()
            try:
                yield session
            finally:
                await outer.rollback()

    async def close(self) -> None:
        await self.engine.dispose()


def open_context(
    settings: Settings,
    *,
    max_connections: int | None = None,
    null_pool: bool = False,
    box: SecretBox | None = None,
    lazy_box: bool = False,
) -> AppContext:
    """The process's context: an engine for `settings.database_url` (at most `max_connections`, or none kept
    open with `null_pool`) and the secret box (`box`, when the caller has already checked it; built now, so a
    process with unusable keys fails at its start, unless `lazy_box`: built when first used)."""
    engine = create_engine(
        settings.database_url,
        max_connections=max_connections or settings.database_max_connections,
        sqlite_busy_timeout_seconds=settings.sqlite_busy_timeout_seconds,
        null_pool=null_pool,
    )
    if box is None and not lazy_box:
        box = crypto.secret_box(settings)
    return AppContext(settings=settings, engine=engine, loaded_box=box)
