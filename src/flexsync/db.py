"""Database engine, sessions and migrations, for SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import Executable, Result, TextClause, event, text
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import CursorResult, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.pool import NullPool

from flexsync.config import DEFAULT_DATABASE_MAX_CONNECTIONS, DEFAULT_SQLITE_BUSY_TIMEOUT_SECONDS

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# How long a session waits for a pooled PostgreSQL connection when all of the process's are in use.
POOL_WAIT_SECONDS = 30.0
# The execution option that marks the engine behind read sessions (read_session_factory), and the key in a pooled
# SQLite connection's info telling whether its PRAGMA query_only is on.
READ_ONLY = "flexsync_read_only"
_QUERY_ONLY = "flexsync_query_only"
_ASYNCPG = asyncpg_dialect()  # type: ignore[no-untyped-call]


def is_sqlite_url(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(
    url: str,
    *,
    max_connections: int = DEFAULT_DATABASE_MAX_CONNECTIONS,
    pool_wait_seconds: float = POOL_WAIT_SECONDS,
    sqlite_busy_timeout_seconds: float = DEFAULT_SQLITE_BUSY_TIMEOUT_SECONDS,
    null_pool: bool = False,
) -> AsyncEngine:
    """One engine per process. SQLite gets WAL and a busy timeout (FLEXSYNC_SQLITE_BUSY_TIMEOUT_SECONDS) so API
    and worker processes can share it.

    PostgreSQL: at most `max_connections` open at once (FLEXSYNC_DATABASE_MAX_CONNECTIONS), half of them kept
    open while idle; a session that finds them all in use waits for one, up to `pool_wait_seconds`, then fails
    with a temporary failure (503 to an API client)."""
    if is_sqlite_url(url):
        engine = create_async_engine(
            url,
            poolclass=NullPool if null_pool else None,
            connect_args={"timeout": sqlite_busy_timeout_seconds},
        )
        _configure_sqlite(engine, round(sqlite_busy_timeout_seconds * 1000))
        return engine
    kept_open = (max_connections + 1) // 2
    kwargs: dict[str, Any] = (
        {"poolclass": NullPool}
        if null_pool
        else {
            "pool_size": kept_open,
            "max_overflow": max_connections - kept_open,
            "pool_timeout": pool_wait_seconds,
            "pool_pre_ping": False,
        }
    )
    engine = create_async_engine(url, **kwargs)
    if not null_pool:
        _count_connections_in_use(engine)
    return engine


def _count_connections_in_use(engine: AsyncEngine) -> None:
    # Imported here: a short command's engine (NullPool) counts nothing and need not load the metrics library.
    from flexsync.metrics import DB_CONNECTIONS_IN_USE

    @event.listens_for(engine.sync_engine.pool, "checkout")
    def _on_checkout(*_args: Any) -> None:
        DB_CONNECTIONS_IN_USE.inc()

    @event.listens_for(engine.sync_engine.pool, "checkin")
    def _on_checkin(*_args: Any) -> None:
        DB_CONNECTIONS_IN_USE.dec()


def _configure_sqlite(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        record.info[_QUERY_ONLY] = False
        # Let SQLAlchemy, not the driver, decide when a transaction begins, so BEGIN IMMEDIATE below works.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A unit of work takes the write lock up front: one that read first and wrote later would otherwise fail
        # with SQLITE_BUSY instead of waiting, when another process writes in between. A read session's
        # transaction takes no lock (WAL: it reads the last commit, whatever is being written meanwhile), and
        # runs with query_only, so a write in it fails at once rather than only when another writer interferes.
        read_only = bool(connection.get_execution_options().get(READ_ONLY))
        info = connection.connection.info
        if info.get(_QUERY_ONLY, False) != read_only:
            connection.exec_driver_sql(f"PRAGMA query_only={int(read_only)}")
            info[_QUERY_ONLY] = read_only
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


class ReadSessionWrite(RuntimeError):
    """A write was attempted in a read session: a programming error (the write belongs in a unit of work)."""


class _ReadSession(Session):
    """The synchronous session behind a read session: refuses, before anything reaches the database, a flush of
    ORM changes and an INSERT, UPDATE or DELETE statement (see read_session_factory)."""


# SQL text that writes: it begins with a writing verb, or holds one in a data-modifying CTE, `WITH w AS (INSERT`.
_WRITING_SQL = re.compile(r"^\s*(?:INSERT|UPDATE|DELETE|MERGE|TRUNCATE)\b|\(\s*(?:INSERT|UPDATE|DELETE|MERGE)\b", re.I)


def _writes(statement: Any) -> bool:
    if isinstance(statement, TextClause):
        return _WRITING_SQL.search(statement.text) is not None
    return bool(getattr(statement, "is_dml", False))


@event.listens_for(_ReadSession, "before_flush")
def _refuse_flush(session: Session, _context: Any, _instances: Any) -> None:
    raise ReadSessionWrite("a read session cannot write: do this in a unit of work (db.transaction())")


@event.listens_for(_ReadSession, "do_orm_execute")
def _refuse_dml(state: ORMExecuteState) -> None:
    if _writes(state.statement):
        raise ReadSessionWrite("a read session cannot write: do this in a unit of work (db.transaction())")


def read_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for reading only, never committed (closing one ends its transaction).

    SQLite: their transactions neither take nor wait for the write lock, so an API read or a dashboard page
    answers while webhook batches and the worker write (a GET's p99 during ingest: BENCHMARKS.md). On both
    backends a write through the session (an ORM flush, an INSERT, UPDATE or DELETE) raises ReadSessionWrite at
    once, so a write that strayed into a read path fails its tests on PostgreSQL too, where the session would
    otherwise roll it back silently when it closes; on SQLite `PRAGMA query_only` refuses any other write as
    well."""
    return async_sessionmaker(
        engine.execution_options(**{READ_ONLY: True}),
        sync_session_class=_ReadSession,
        expire_on_commit=False,
        autoflush=False,
    )


@asynccontextmanager
async def transaction(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A unit of work that commits once at the end, or rolls back on any error."""
    async with factory() as session, session.begin():
        yield session


# The asyncpg connection under a session whose transaction the driver holds (see driver_transaction).
_DRIVER_KEY = "flexsync.driver_connection"


@asynccontextmanager
async def driver_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """PostgreSQL: a unit of work whose transaction is held by the asyncpg connection itself, for a hot path.

    The session yielded works as any other; `fetch_rows` runs its statements on the driver directly, skipping
    SQLAlchemy's statement execution, and the ORM, when the work needs it, joins the transaction through a
    savepoint (the driver nests a transaction started inside one). For the webhook batch (three statements,
    rarely any ORM) this cuts the client's and the server's CPU per transaction (BENCHMARKS.md). Commits at
    the end, rolls back on any error.
    """
    async with engine.connect() as connection:
        driver: Any = (await connection.get_raw_connection()).driver_connection
        try:
            async with driver.transaction():
                session = AsyncSession(bind=connection, expire_on_commit=False, autoflush=False)
                session.info[_DRIVER_KEY] = driver
                try:
                    yield session
                    await session.commit()  # the ORM's work, if any: flushed, its savepoint released
                finally:
                    await session.close()
        except BaseException:
            # A connection the database dropped is not SQLAlchemy's to notice here (its statements ran on the
            # driver): keep it out of the pool.
            if driver.is_closed():
                await connection.invalidate()
            raise


@lru_cache(maxsize=64)
def _driver_sql(statement: TextClause) -> tuple[str, tuple[str, ...]]:
    """The statement as asyncpg takes it (`$1`, `$2`, ...) and the names of its values in that order."""
    compiled = statement.compile(dialect=_ASYNCPG)
    return compiled.string, tuple(compiled.positiontup or ())


async def fetch_rows(session: AsyncSession, statement: TextClause, params: Mapping[str, Any]) -> Sequence[Any]:
    """The statement's rows (tuples): on the driver in a `driver_transaction`, else through the session."""
    driver = session.info.get(_DRIVER_KEY)
    if driver is None:
        result = cast(CursorResult[Any], await session.execute(statement, params))
        return list(result) if result.returns_rows else []
    sql, names = _driver_sql(statement)
    rows: Sequence[Any] = await driver.fetch(sql, *(params[name] for name in names))
    return rows


# PostgreSQL, inside a transaction: the plan mode for the statements that follow, as expressions. Like SET LOCAL,
# `set_config(..., true)` lasts until the transaction ends, and a NULL value puts back the connection's own
# setting (as SET LOCAL ... TO DEFAULT does); unlike SET, it can ride on a statement that is run anyway.
PLAN_FOR_VALUES = "set_config('plan_cache_mode', 'force_custom_plan', true)"
PLAN_AS_CONFIGURED = "set_config('plan_cache_mode', NULL, true)"
# The same switches as statements of their own, for when no statement is at hand to carry them.
SWITCH_TO_PLANS_FOR_VALUES = text(f"SELECT {PLAN_FOR_VALUES}")
SWITCH_TO_PLANS_AS_CONFIGURED = text(f"SELECT {PLAN_AS_CONFIGURED}")


async def execute_planned_for_values(
    session: AsyncSession, statement: Executable, params: Any = None
) -> Result[*tuple[Any, ...]]:
    """Execute a lookup by keys with a plan made for these keys, every time (PostgreSQL).

    The driver prepares each statement once per connection, and after five executions PostgreSQL may settle on
    a generic plan, made without the values, and keep it until the next ANALYZE. Made while a table is young
    (the first minutes of a deployment, a backfill), such a plan can serve a lookup by key from an index that
    reads a whole environment, many times slower than the lookup by key (BENCHMARKS.md).
    Only the lookup is planned each time; the statements after it keep their cached plans (the setting is put
    back to the connection's own). Must run inside a transaction, as every session's statements do. A hot path
    can save the two extra round trips by carrying PLAN_FOR_VALUES and PLAN_AS_CONFIGURED in statements of its
    own (sync/inbound.py does).
    """
    if session.get_bind().dialect.name != "postgresql":
        return await session.execute(statement, params)
    await session.execute(SWITCH_TO_PLANS_FOR_VALUES)
    result = await session.execute(statement, params)
    await session.execute(SWITCH_TO_PLANS_AS_CONFIGURED)
    return result


def alembic_config(url: str) -> Config:
    # Alembic is imported where migrations are read or run: a short command that only writes a row never loads it.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


# PostgreSQL's answers meaning "not now" rather than "no": it is starting, shutting down, out of connection slots,
# or it dropped the connection (class 08).
_UNAVAILABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the errors behind it: SQLAlchemy keeps the driver's error as `orig`; its asyncpg adapter chains
    asyncpg's own as the cause."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database could not be reached or went away (it may be starting, restarting or
    failing over), as opposed to refusing what was asked (no such database, a wrong password, bad SQL)."""
    # SQLAlchemy marks an error after which it found the driver's connection closed, whatever the driver said
    # (asyncpg, cut off mid-handshake, can report a confused protocol state instead).
    return any(
        isinstance(cause, _UNAVAILABLE) or (isinstance(cause, DBAPIError) and cause.connection_invalidated)
        for cause in _causes(exc)
    )


def is_busy(exc: BaseException) -> bool:
    """SQLite: whether `exc` says another connection held the write lock for longer than the busy timeout."""
    return any(
        isinstance(cause, sqlite3.OperationalError) and str(cause) in ("database is locked", "database is busy")
        for cause in _causes(exc)
    )


def temporary_failure(
    exc: BaseException, *, sqlite_busy_timeout_seconds: float = DEFAULT_SQLITE_BUSY_TIMEOUT_SECONDS
) -> str | None:
    """What to tell a client whose request failed only because the database was away or busy, and may succeed
    when tried again; None for any other failure."""
    if is_busy(exc):
        return (
            f"the database is busy: another process held SQLite's write lock for more than "
            f"{sqlite_busy_timeout_seconds:g} s; nothing was changed, try again"
        )
    if is_unavailable(exc):
        return "the database is unreachable; try again"
    if any(isinstance(cause, PoolTimeout) for cause in _causes(exc)):
        return (
            f"the server is busy: all of its database connections stayed in use for {POOL_WAIT_SECONDS:g} s "
            "(FLEXSYNC_DATABASE_MAX_CONNECTIONS); nothing was changed, try again"
        )
    return None


def migrate(url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision`. Safe to call from several processes at once on PostgreSQL."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def unmigrated_schema(url: str) -> str | None:
    """Why this version of flexsync cannot run on the database yet, or None: no tables, or a schema behind this
    version's migrations. A schema ahead of them (a newer flexsync migrated it) is not refused: migrations
    add, so an older process keeps working during a rolling deploy."""
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    async def current() -> str | None:
        engine = create_engine(url, null_pool=True)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
        finally:
            await engine.dispose()

    revision = asyncio.run(current())
    if revision is None:
        return "the database has no flexsync tables yet: run `flexsync migrate` first"
    scripts = ScriptDirectory.from_config(alembic_config(url))
    head = scripts.get_current_head()
    known = {script.revision for script in scripts.walk_revisions()}
    if revision != head and revision in known:
        return f"the database schema is at migration {revision}, this flexsync needs {head}: run `flexsync migrate`"
    return None
