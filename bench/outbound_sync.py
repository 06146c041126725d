"""Outbound sync benchmark (issue 4): customers created through the API until they are linked in Stripe.

Starts its own localstripe, a fresh database (PostgreSQL or SQLite), `flexsync serve` with its embedded worker
(or `serve --no-worker` plus `--workers K` separate `flexsync worker` processes), one tenant and a Stripe
connection whose rate limit is raised for the run (`--rate`, default 1000 req/s; Stripe's own default for
test mode is 25). Then, for each round:

- idle: customers created one at a time, each waited for until the API shows it linked
  (`metadata.stripe_customer_id`); create-to-linked latency as the client sees it (POST sent -> link visible,
  polled every 2 ms), p50 and p99;
- burst: `--burst` customers created by 16 concurrent clients; customers/s until the last one is linked, and
  create-to-linked latency per customer from the database (customer created_at -> link last_synced_at);
- backlog (with --workers): `--backlog` customers queued while the workers are stopped, then drained by
  freshly started workers; links per second once every worker is running (the workers' own pace), and the
  workers' CPU time per job linked meanwhile;
- Stripe create calls per customer: localstripe's customers carrying each flexsync id (target: exactly 1).

Usage:
    python bench/outbound_sync.py --pg postgresql+asyncpg://postgres@127.0.0.1:5432/postgres --rounds 3
    python bench/outbound_sync.py --sqlite --rounds 3
    python bench/outbound_sync.py --pg ... --workers 4 --concurrency 8
Prints one line per round and the medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import stripe
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import (  # noqa: E402
    DatabaseUnderTest,
    new_tenant,
    postgres_database,
    sqlite_database,
    start_localstripe,
    start_server,
)
from tests.sync_support import STRIPE_TEST_KEY, add_connection, start_worker  # noqa: E402

from flexsync.models import Customer, CustomerLink  # noqa: E402
from measure import cpu_seconds  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextmanager
def database(args: argparse.Namespace, tmp: Path) -> Iterator[DatabaseUnderTest]:
    if args.pg:
        with postgres_database(args.pg) as db:
            yield db
    else:
        with sqlite_database(tmp) as db:
            yield db


def idle_latencies(api: httpx.Client, count: int, tag: str) -> list[float]:
    latencies = []
    for n in range(count):
        started = time.perf_counter()
        response = api.post("/v1/customers", json={"external_id": f"{tag}-idle-{n}", "name": f"Idle {n}"})
        customer_id = response.json()["id"]
        while "stripe_customer_id" not in api.get(f"/v1/customers/{customer_id}").json()["metadata"]:
            time.sleep(0.002)
        latencies.append(time.perf_counter() - started)
    return latencies


async def create_burst(base_url: str, key: str, count: int, tag: str) -> list[str]:
    ids: list[str] = []
    numbers = iter(range(count))

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base_url, headers={"x-api-key": key}, timeout=60) as api:
            for n in numbers:
                response = await api.post("/v1/customers", json={"external_id": f"{tag}-burst-{n}", "name": f"B {n}"})
                response.raise_for_status()
                ids.append(response.json()["id"])

    await asyncio.gather(*(client() for _ in range(16)))
    return ids


def link_latencies(db: DatabaseUnderTest, ids: list[str]) -> list[float]:
    async def work(session: AsyncSession) -> list[float]:
        rows = await session.execute(
            select(Customer.created_at, CustomerLink.last_synced_at)
            .join(CustomerLink, CustomerLink.customer_id == Customer.id)
            .where(Customer.id.in_(ids))
        )
        return [(linked - created).total_seconds() for created, linked in rows.all()]

    return db.run(work)


def drained(db: DatabaseUnderTest, ids: list[str], since: datetime) -> tuple[int, float] | None:
    """Links made from `since` (every worker running) and the seconds until the last; None if too few."""

    async def work(session: AsyncSession) -> tuple[int, datetime | None]:
        count, last = (
            await session.execute(
                select(func.count(), func.max(CustomerLink.last_synced_at)).where(
                    CustomerLink.customer_id.in_(ids), CustomerLink.last_synced_at >= since
                )
            )
        ).one()
        return int(count), last

    count, last = db.run(work)
    if count < 100 or last is None:
        return None
    return count, (last - since).total_seconds()


def wait_succeeded(api: httpx.Client, total: int) -> None:
    while api.get("/v1/sync-jobs", params={"status": "succeeded", "limit": 1}).json()["pagination"]["total"] < total:
        time.sleep(0.01)


def creates_per_customer(stripe_base: str, ids: list[str]) -> Counter[str]:
    client = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": stripe_base})
    wanted, counts = set(ids), Counter[str]()
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = client.v1.customers.list(params)  # type: ignore[arg-type]
        for customer in page.data:
            flexprice_id = customer.metadata.to_dict().get("flexprice_customer_id")
            if flexprice_id in wanted:
                counts[flexprice_id] += 1
        if not page.has_more:
            return counts
        params["starting_after"] = page.data[-1].id


def run_round(args: argparse.Namespace, number: int) -> dict[str, float]:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        db = stack.enter_context(database(args, tmp))
        localstripe = start_localstripe(tmp)
        stack.callback(localstripe.stop)
        env = {"FLEXSYNC_STRIPE_API_BASE": localstripe.base_url, "FLEXSYNC_LOG_LEVEL": "warning"}
        server_args = ["--no-worker"] if args.workers else []
        server = start_server(db, tmp, *server_args, **env)
        stack.callback(server.stop)
        # Info level: start_worker waits for the worker's "started" line.
        worker_env = {**env, "FLEXSYNC_LOG_LEVEL": "info"}
        worker_args = ("--concurrency", str(args.concurrency))
        workers = [start_worker(db, tmp, *worker_args, **worker_env) for _ in range(args.workers)]
        for worker in workers:
            stack.callback(worker.stop)
        tenant = new_tenant(db, server.base_url)
        add_connection(db, tenant, {"rate_limit": args.rate})
        with tenant.client() as api:
            idle_latencies(api, 3, "warmup")
            idle = idle_latencies(api, args.idle, "r")
            started = time.perf_counter()
            ids = asyncio.run(create_burst(server.base_url, tenant.api_key, args.burst, "r"))
            wait_succeeded(api, args.burst + args.idle + 3)
            elapsed = time.perf_counter() - started
            burst = link_latencies(db, ids)
            result: dict[str, float] = {}
            if workers:
                # The workers' own pace: a backlog queued while they were stopped, drained by fresh ones.
                for worker in workers:
                    worker.stop()
                backlog = asyncio.run(create_burst(server.base_url, tenant.api_key, args.backlog, "backlog"))
                fresh = [start_worker(db, tmp, *worker_args, **worker_env) for _ in range(args.workers)]
                for worker in fresh:
                    stack.callback(worker.stop)
                # Workers start one after another (seconds each on a busy machine): count from the last start.
                all_running = datetime.now(UTC)
                cpu_before = sum(cpu_seconds(worker.process.pid) for worker in fresh)
                wait_succeeded(api, args.burst + args.idle + 3 + args.backlog)
                cpu_used = sum(cpu_seconds(worker.process.pid) for worker in fresh) - cpu_before
                measured = drained(db, backlog, all_running)
                if measured is not None:
                    count, seconds = measured
                    result["backlog_customers_per_s"] = count / seconds
                    # The workers' CPU over the same stretch, per job they linked in it.
                    result["worker_cpu_ms_per_job"] = cpu_used * 1000 / count
                ids += backlog
        counts = creates_per_customer(localstripe.base_url, ids)
        result |= {
            "idle_p50_ms": statistics.median(idle) * 1000,
            "idle_p99_ms": percentile(idle, 0.99) * 1000,
            "burst_customers_per_s": args.burst / elapsed,
            "burst_p50_ms": statistics.median(burst) * 1000,
            "burst_p99_ms": percentile(burst, 0.99) * 1000,
            "creates_per_customer": sum(counts.values()) / len(ids),
            "max_creates_for_one_customer": max(counts.values()),
        }
        print(f"round {number}: " + "  ".join(f"{k}={v:.1f}" for k, v in result.items()), flush=True)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description="flexsync -> Stripe outbound sync benchmark")
    backend = parser.add_mutually_exclusive_group(required=True)
    backend.add_argument("--pg", help="PostgreSQL admin URL (postgresql+asyncpg://...); a database is made per round")
    backend.add_argument("--sqlite", action="store_true", help="a temporary SQLite database per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=int, default=50, help="customers created one at a time")
    parser.add_argument("--burst", type=int, default=500, help="customers created at once")
    parser.add_argument("--backlog", type=int, default=1500, help="customers queued for the workers (--workers only)")
    parser.add_argument("--workers", type=int, default=0, help="separate worker processes (0: the embedded one)")
    parser.add_argument("--concurrency", type=int, default=8, help="jobs per separate worker")
    parser.add_argument("--rate", type=float, default=1000.0, help="the connection's Stripe rate limit, req/s")
    args = parser.parse_args()
    results = [run_round(args, n + 1) for n in range(args.rounds)]
    keys = dict.fromkeys(key for result in results for key in result)
    print("median: " + "  ".join(f"{k}={statistics.median(r[k] for r in results if k in r):.1f}" for k in keys))


if __name__ == "__main__":
    main()
