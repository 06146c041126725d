"""Catch-up benchmark (issue 19): customer events missed while no webhook arrived, caught up from Stripe's Events
API by `flexsync events catch-up`, on PostgreSQL.

For each size (2,500 and 10,000 missed events by default) localstripe is filled once: 70 % of the events are
`customer.created` (concurrent creates), 20 % `customer.updated` and 10 % `customer.deleted` of those customers,
a second after their creation.
Then each run, on a fresh database with one tenant, environment and Stripe connection (rate_limit 1000/s, so
localstripe and not the limiter sets the pace) whose catch-up cursor stands just before the first event:

- the list-only loop: the official SDK lists the same events (`events.list_async`, one list per type, 100 per
  page, the same `created` window, `starting_after`) and does nothing else: the pace localstripe allows;
- `flexsync events catch-up --connection ID --json` as a subprocess: events/s (all of them, over the run's own
  `seconds`, process start left out), and its peak RSS (VmHWM, read every 0.1 s): flat means the same at both
  sizes. Afterwards the database must hold every event once, and the report must count every one applied.

The two alternate which goes first between runs. Then, once no event is younger than catch-up's overlap, one
more catch-up runs in this process with nothing missed, and the Stripe requests it made are counted
(`flexsync_stripe_requests_total`). Prints one line per run and the medians per size; --json prints one JSON
object at the end.

Usage (PostgreSQL must be reachable; the script creates and drops its own databases):

    python bench/catch_up.py --pg postgresql+asyncpg://postgres@127.0.0.1:5432/postgres --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url

from backfill import fresh_database, localstripe, sdk, setup
from flexsync.config import Settings
from flexsync.connections.catch_up import OVERLAP_SECONDS
from flexsync.db import create_engine, migrate, session_factory, transaction
from flexsync.metrics import STRIPE_REQUESTS
from flexsync.models import CatchUpState
from flexsync.webhooks.catch_up import EVENT_TYPES
from flexsync.webhooks.catch_up_terminal import catch_up_in_foreground
from measure import peak_rss_kb

FILL_CONCURRENCY = 32
SHARES = {"customer.created": 0.7, "customer.updated": 0.2, "customer.deleted": 0.1}


async def fill(base: str, size: int) -> None:
    """`size` customer events: creates, then updates and deletes of some of those customers."""
    client = sdk(base)
    semaphore = asyncio.Semaphore(FILL_CONCURRENCY)
    created = int(size * SHARES["customer.created"])
    updated = int(size * SHARES["customer.updated"])
    deleted = size - created - updated

    async def limited(work: Any) -> Any:
        async with semaphore:
            return await work

    customers = await asyncio.gather(
        *(
            limited(
                client.v1.customers.create_async(
                    {"name": f"Missed {i}", "email": f"missed{i}@example.com", "metadata": {"source": "bench"}}
                )
            )
            for i in range(created)
        )
    )
    ids = [customer.id for customer in customers]
    # Missed changes come minutes or hours apart, not in the second of their customer's creation (two events of
    # one customer in one second make catch-up, like a webhook, ask Stripe for the customer's current state).
    await asyncio.sleep(1.1)
    await asyncio.gather(
        *(limited(client.v1.customers.update_async(ids[i], {"name": f"Renamed {i}"})) for i in range(updated))
    )
    await asyncio.sleep(1.1)
    await asyncio.gather(*(limited(client.v1.customers.delete_async(ids[-1 - i])) for i in range(deleted)))


async def list_only(base: str, since: int, until: int) -> tuple[int, float]:
    """List the window's customer events with the SDK, one list per type, and nothing else: (events, seconds)."""
    client = sdk(base)
    started = time.perf_counter()
    listed = 0
    for event_type in EVENT_TYPES:
        after: str | None = None
        while True:
            params: dict[str, Any] = {"type": event_type, "created": {"gte": since, "lte": until}, "limit": 100}
            if after is not None:
                params["starting_after"] = after
            page = await client.v1.events.list_async(params)  # type: ignore[arg-type]
            listed += len(page.data)
            if not page.has_more or not page.data:
                break
            after = page.data[-1].id
    return listed, time.perf_counter() - started


async def place_cursor(url: str, connection_id: str, cursor: int) -> None:
    """The connection's catch-up last read up to `cursor`: as if its webhooks stopped arriving then."""
    engine = create_engine(url, null_pool=True)
    try:
        async with transaction(session_factory(engine)) as session:
            now = datetime.now(UTC)
            state = CatchUpState(
                connection_id=connection_id, cursor=cursor, run_counts={}, created_at=now, updated_at=now
            )
            session.add(state)
    finally:
        await engine.dispose()


async def count_events(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        rows = await conn.fetchval("SELECT count(*) FROM webhook_events WHERE source = 'catch_up'")
        distinct = await conn.fetchval("SELECT count(DISTINCT stripe_event_id) FROM webhook_events")
        return int(rows), int(distinct)
    finally:
        await conn.close()


def environment(url: str, base: str, key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXSYNC_")}
    env.update(FLEXSYNC_DATABASE_URL=url, FLEXSYNC_ENCRYPTION_KEYS=key, FLEXSYNC_STRIPE_API_BASE=base)
    return env


def prepare(url: str, key: str, cursor: int) -> str:
    migrate(url)
    connection_id = asyncio.run(setup(url, key))
    asyncio.run(place_cursor(url, connection_id, cursor))
    return connection_id


def catch_up(url: str, base: str, key: str, size: int, cursor: int) -> dict[str, Any]:
    connection_id = prepare(url, key, cursor)
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "flexsync", "events", "catch-up", "--connection", connection_id, "--json"],
            env=environment(url, base, key),
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
        peak_kb = 0
        while True:
            pid, status, _usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak_kb = max(peak_kb, peak_rss_kb(process.pid))
            time.sleep(0.1)
        out.seek(0)
        report = json.loads(out.read())
    if status != 0 or (report["listed"], report["stored"], report["applied"]) != (size, size, size):
        raise RuntimeError(f"catch-up did not store and apply {size} events: {report}")
    stored, distinct = asyncio.run(count_events(url))
    if (stored, distinct) != (size, size):
        raise RuntimeError(f"expected {size} events stored once, found {stored} rows of {distinct} events")
    return {"rate": size / report["seconds"], "seconds": report["seconds"], "peak_rss_mb": peak_kb / 1024}


def requests_when_nothing_was_missed(url: str, base: str, key: str, cursor: int) -> tuple[int, int]:
    """Catch a fresh connection up to now, then once more: the Stripe requests of the second run, and the
    events it stored."""
    connection_id = prepare(url, key, cursor)
    settings = Settings(database_url=url, encryption_keys=key, stripe_api_base=base)

    def made() -> float:
        return sum(STRIPE_REQUESTS.labels("events.list", status)._value.get() for status in ("ok", "429", "network"))

    asyncio.run(catch_up_in_foreground(settings, connection_id, None, on_gap=None))
    before = made()
    report = asyncio.run(catch_up_in_foreground(settings, connection_id, None, on_gap=None))
    return int(made() - before), report.stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pg", required=True, help="an admin URL, e.g. postgresql+asyncpg://postgres@127.0.0.1/postgres"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[2500, 10000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    key = Fernet.generate_key().decode()
    results: dict[str, Any] = {}
    with localstripe() as base:
        for size in args.sizes:
            httpx.delete(f"{base}/_config/data", timeout=60).raise_for_status()
            cursor = int(time.time()) - 1
            filled = time.perf_counter()
            asyncio.run(fill(base, size))
            last_event = int(time.time()) + 1
            print(f"{size} customer events made in localstripe in {time.perf_counter() - filled:.1f} s", flush=True)
            runs: list[dict[str, float]] = []
            for run in range(args.runs):
                flexsync: dict[str, Any] = {}
                listing = 0.0
                for part in ("list", "flexsync") if run % 2 == 0 else ("flexsync", "list"):
                    if part == "list":
                        listed, seconds = asyncio.run(list_only(base, cursor - OVERLAP_SECONDS, int(time.time())))
                        assert listed == size, listed
                        listing = size / seconds
                    else:
                        with fresh_database(args.pg) as url:
                            flexsync = catch_up(url, base, key, size, cursor)
                runs.append({**flexsync, "list_rate": listing, "ratio": flexsync["rate"] / listing})
                print(
                    f"size {size} run {run + 1}: flexsync {flexsync['rate']:.0f} events/s "
                    f"({flexsync['seconds']:.1f} s, peak RSS {flexsync['peak_rss_mb']:.0f} MB); "
                    f"list-only {listing:.0f} events/s; ratio {flexsync['rate'] / listing:.0%}",
                    flush=True,
                )
            results[str(size)] = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
        wait = last_event + OVERLAP_SECONDS + 1 - time.time()
        if wait > 0:
            print(f"waiting {wait:.0f} s until no event is within catch-up's overlap", flush=True)
            time.sleep(wait)
        with fresh_database(args.pg) as url:
            requests, stored = requests_when_nothing_was_missed(url, base, key, int(time.time()) - 1)
        results["nothing_missed"] = {"requests": requests, "stored": stored}
    for size in args.sizes:
        median = results[str(size)]
        print(
            f"median, {size} events: flexsync {median['rate']:.0f}/s, list-only {median['list_rate']:.0f}/s "
            f"({median['ratio']:.0%}), peak RSS {median['peak_rss_mb']:.0f} MB"
        )
    print(f"nothing missed: {requests} Stripe requests for one connection ({stored} events stored)")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
