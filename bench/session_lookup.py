"""What a dashboard page pays to find its session: the one statement that reads the session row with its API key,
tenant and environment, against the statement that read the API key alone before sessions were kept on the server.

A page's time on a shared machine varies far more than this difference (bench/dashboard_pages.py); this times the
two statements alone, in one process, alternating in blocks, each in a read session as the pages run them.
The database holds `--sessions` session rows spread over 100 API keys, so the lookup is a real index lookup.

Usage:
    python bench/session_lookup.py --sqlite
    python bench/session_lookup.py --pg postgresql+asyncpg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession  # noqa: E402
from tests.support import DatabaseUnderTest, postgres_database, sqlite_database  # noqa: E402

from flexsync.db import create_engine, read_session_factory, session_factory, transaction  # noqa: E402
from flexsync.models import ApiKey, Environment, Tenant, utcnow  # noqa: E402
from flexsync.tenancy import dashboard_sessions  # noqa: E402
from flexsync.tenancy import service as tenancy  # noqa: E402

IDLE = timedelta(hours=2)


@contextmanager
def database(args: argparse.Namespace, tmp: Path) -> Iterator[DatabaseUnderTest]:
    if args.pg:
        with postgres_database(args.pg) as db:
            yield db
    else:
        with sqlite_database(tmp) as db:
            yield db


async def key_alone(session: AsyncSession, api_key_id: str) -> object:
    """The lookup of every page before: the API key with its tenant's and environment's names."""
    stmt = (
        select(ApiKey, Tenant.name, Environment.name)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .join(Environment, Environment.id == ApiKey.environment_id)
        .where(ApiKey.id == api_key_id, ApiKey.revoked_at.is_(None))
    )
    return (await session.execute(stmt)).first()


async def run(url: str, sessions: int, lookups: int, blocks: int) -> None:
    engine = create_engine(url)
    try:
        async with transaction(session_factory(engine)) as session:
            tenant = await tenancy.create_tenant(session, "Bench tenant")
            environment = await tenancy.create_environment(session, tenant.id, "bench")
            keys = [(await tenancy.create_api_key(session, tenant.id, environment.id)).id for _ in range(100)]
            now = utcnow()
            ids = [await dashboard_sessions.start(session, keys[i % len(keys)], "bench", now) for i in range(sessions)]
        probe_key, probe_session = keys[0], ids[0]
        reads = read_session_factory(engine)

        async def timed(lookup: Callable[[AsyncSession], Awaitable[object]]) -> float:
            """Microseconds per lookup, each in a read session of its own as a page has it."""
            started = time.perf_counter()
            for _ in range(lookups):
                async with reads() as read:
                    assert await lookup(read) is not None
            return (time.perf_counter() - started) / lookups * 1e6

        variants: dict[str, Callable[[AsyncSession], Awaitable[object]]] = {
            "key alone (before)": lambda read: key_alone(read, probe_key),
            "session with key (now)": lambda read: dashboard_sessions.find(read, probe_session, utcnow(), IDLE),
        }
        for lookup in variants.values():  # warm: connections, prepared statements, caches
            await timed(lookup)
        results: dict[str, list[float]] = {name: [] for name in variants}
        for block in range(blocks):
            order = list(variants) if block % 2 == 0 else list(reversed(variants))
            for name in order:
                results[name].append(await timed(variants[name]))
        print(f"{engine.dialect.name}, {sessions} sessions, {lookups} lookups per block, {blocks} blocks")
        for name, times in results.items():
            print(f"  {name:24} median {statistics.median(times):7.1f} us per lookup (a page's read session included)")
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    backend = parser.add_mutually_exclusive_group(required=True)
    backend.add_argument("--sqlite", action="store_true")
    backend.add_argument("--pg", metavar="ADMIN_URL")
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--lookups", type=int, default=500)
    parser.add_argument("--blocks", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir, database(args, Path(tmp_dir)) as db:
        asyncio.run(run(db.url, args.sessions, args.lookups, args.blocks))


if __name__ == "__main__":
    main()
