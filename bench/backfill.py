"""Backfill benchmark (issue 5): an empty flexsync imports a Stripe account, on PostgreSQL.

For each size (5,000 and 20,000 Stripe customers by default) localstripe is filled once (concurrent creates,
its pickling turned off as TESTING.md says), then each run, on a fresh database with one tenant, environment and
Stripe connection (rate_limit 1000/s, so Stripe's stand-in and not the limiter sets the pace):

- the list-only loop: the official SDK lists the same pages (`customers.list_async`, 100 per page,
  `starting_after`) and does nothing else: the pace localstripe allows;
- `flexsync reconcile --connection ID --json` as a subprocess: customers/s imported (all of them, over the run's
  own duration: `finished_at - created_at`, process start left out), the command's wall and CPU time, and its
  peak RSS (VmHWM of /proc/PID/status, read every 0.1 s; importing flexsync alone takes about 97 MB).
  Afterwards the database must hold exactly one customer and one link per Stripe customer.

The two alternate which goes first between runs. Prints one line per run and the medians per size; --json
prints one JSON object at the end.

Usage (PostgreSQL must be reachable; the script creates and drops its own databases):

    python bench/backfill.py --pg postgresql+asyncpg://postgres@127.0.0.1:5432/postgres --runs 3
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
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import stripe
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url

from flexsync.crypto import SecretBox
from flexsync.db import create_engine, migrate, session_factory, transaction
from flexsync.ids import new_id
from flexsync.models import StripeConnection
from flexsync.tenancy import service as tenancy
from measure import free_port, peak_rss_kb

STRIPE_KEY = "sk_test_bench_backfill"
LOCALSTRIPE = (
    "import localstripe.resources as r; r.Store.dump_to_disk = lambda self: None; "
    "from localstripe.server import start; start()"
)
FILL_CONCURRENCY = 32


@contextmanager
def localstripe() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", LOCALSTRIPE, "--port", str(port), "--from-scratch"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/v1/customers", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(10)


def sdk(base: str) -> stripe.StripeClient:
    return stripe.StripeClient(STRIPE_KEY, base_addresses={"api": base}, http_client=stripe.HTTPXClient())


async def fill(base: str, size: int) -> None:
    client = sdk(base)
    semaphore = asyncio.Semaphore(FILL_CONCURRENCY)

    async def create(i: int) -> None:
        async with semaphore:
            await client.v1.customers.create_async(
                {
                    "name": f"Backfill {i}",
                    "email": f"backfill{i}@example.com",
                    "address": {
                        "line1": f"{i} Bench Street",
                        "city": "Berlin",
                        "postal_code": "10115",
                        "country": "DE",
                    },
                    "metadata": {"source": "bench"},
                }
            )

    await asyncio.gather(*(create(i) for i in range(size)))


async def list_only(base: str) -> tuple[int, float]:
    """List every customer with the SDK, as flexsync does, and nothing else: (customers, seconds)."""
    client = sdk(base)
    started = time.perf_counter()
    listed = 0
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100}
        if after is not None:
            params["starting_after"] = after
        page = await client.v1.customers.list_async(params)  # type: ignore[arg-type]
        listed += len(page.data)
        if not page.has_more or not page.data:
            return listed, time.perf_counter() - started
        after = page.data[-1].id


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    name = f"flexsync_bench_{uuid.uuid4().hex[:12]}"
    admin_dsn = make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def setup(url: str, key: str) -> str:
    """A tenant, environment and Stripe connection (as the connections API stores it); returns its id."""
    engine = create_engine(url, null_pool=True)
    try:
        async with transaction(session_factory(engine)) as session:
            tenant = await tenancy.create_tenant(session, "Bench")
            environment = await tenancy.create_environment(session, tenant.id, "bench")
            box = SecretBox([key])
            connection = StripeConnection(
                id=new_id("conn"),
                tenant_id=tenant.id,
                environment_id=environment.id,
                name="Bench Stripe",
                provider="stripe",
                status="active",
                mode="test",
                secret_key_encrypted=box.encrypt(STRIPE_KEY),
                secret_key_last4=STRIPE_KEY[-4:],
                publishable_key="pk_test_bench_backfill",
                webhook_secrets_encrypted=[],
                settings={"rate_limit": 1000},
            )
            session.add(connection)
            return connection.id
    finally:
        await engine.dispose()


async def count_rows(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        customers = await conn.fetchval("SELECT count(DISTINCT metadata->>'stripe_customer_id') FROM customers")
        links = await conn.fetchval("SELECT count(DISTINCT stripe_customer_id) FROM customer_links")
        return int(customers), int(links)
    finally:
        await conn.close()


def reconcile(url: str, base: str, key: str, size: int) -> dict[str, Any]:
    migrate(url)
    connection_id = asyncio.run(setup(url, key))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXSYNC_")}
    env.update(FLEXSYNC_DATABASE_URL=url, FLEXSYNC_ENCRYPTION_KEYS=key, FLEXSYNC_STRIPE_API_BASE=base)
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "flexsync", "reconcile", "--connection", connection_id, "--json"],
            env=env,
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
        peak_kb = 0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak_kb = max(peak_kb, peak_rss_kb(process.pid))
            time.sleep(0.1)
        wall = time.perf_counter() - started
        out.seek(0)
        report = json.loads(out.read())
    if status != 0 or report["status"] != "succeeded" or report["counts"]["imported"] != size:
        raise RuntimeError(f"reconcile did not import {size} customers: {report}")
    customers, links = asyncio.run(count_rows(url))
    if (customers, links) != (size, size):
        raise RuntimeError(f"expected {size} customers and links, found {customers} and {links}")
    duration = (
        datetime.fromisoformat(report["finished_at"]) - datetime.fromisoformat(report["created_at"])
    ).total_seconds()
    return {
        "rate": size / duration,
        "seconds": duration,
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": peak_kb / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pg", required=True, help="an admin URL, e.g. postgresql+asyncpg://postgres@127.0.0.1/postgres"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    key = Fernet.generate_key().decode()
    results: dict[int, dict[str, float]] = {}
    with localstripe() as base:
        for size in args.sizes:
            httpx.delete(f"{base}/_config/data", timeout=60).raise_for_status()
            filled = time.perf_counter()
            asyncio.run(fill(base, size))
            print(f"{size} customers created in localstripe in {time.perf_counter() - filled:.1f} s", flush=True)
            runs: list[dict[str, float]] = []
            for run in range(args.runs):
                flexsync: dict[str, Any] = {}
                listing = 0.0
                for part in ("list", "flexsync") if run % 2 == 0 else ("flexsync", "list"):
                    if part == "list":
                        listed, seconds = asyncio.run(list_only(base))
                        assert listed == size, listed
                        listing = size / seconds
                    else:
                        with fresh_database(args.pg) as url:
                            flexsync = reconcile(url, base, key, size)
                runs.append({**flexsync, "list_rate": listing, "ratio": flexsync["rate"] / listing})
                print(
                    f"size {size} run {run + 1}: flexsync {flexsync['rate']:.0f} customers/s "
                    f"({flexsync['seconds']:.1f} s; command {flexsync['wall']:.1f} s, {flexsync['cpu']:.1f} s CPU, "
                    f"peak RSS {flexsync['peak_rss_mb']:.0f} MB); list-only {listing:.0f} customers/s; "
                    f"ratio {flexsync['rate'] / listing:.0%}",
                    flush=True,
                )
            results[size] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    for size, median in results.items():
        print(
            f"median, {size} customers: flexsync {median['rate']:.0f}/s, list-only {median['list_rate']:.0f}/s "
            f"({median['ratio']:.0%}), peak RSS {median['peak_rss_mb']:.0f} MB"
        )
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
