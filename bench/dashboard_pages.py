"""Dashboard page latency: how long each server-rendered page takes, as a signed-in browser would ask for it.

Starts `flexsync serve --no-worker` on a fresh database (SQLite, or PostgreSQL with --pg), one tenant with a
Stripe connection and `--customers` customers made through the API (each with a pending create job, since no
worker runs), then requests every page `--requests` times over one keep-alive connection and prints the
median and p95 per page. The customer list renders 25 customers, each with its Stripe sync status.

Usage:
    python bench/dashboard_pages.py --sqlite
    python bench/dashboard_pages.py --pg postgresql+asyncpg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import DatabaseUnderTest, new_tenant, postgres_database, sqlite_database, start_server  # noqa: E402
from tests.sync_support import add_connection  # noqa: E402


@contextmanager
def database(args: argparse.Namespace, tmp: Path) -> Iterator[DatabaseUnderTest]:
    if args.pg:
        with postgres_database(args.pg) as db:
            yield db
    else:
        with sqlite_database(tmp) as db:
            yield db


def timed(client: httpx.Client, path: str, requests: int) -> list[float]:
    client.get(path).raise_for_status()  # warm-up
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    backend = parser.add_mutually_exclusive_group(required=True)
    backend.add_argument("--sqlite", action="store_true")
    backend.add_argument("--pg", metavar="ADMIN_URL")
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_dir, database(args, Path(tmp_dir)) as db:
        server = start_server(db, Path(tmp_dir), "--no-worker")
        try:
            tenant = new_tenant(db, server.base_url)
            add_connection(db, tenant)
            with tenant.client() as api:
                for i in range(args.customers):
                    api.post(
                        "/v1/customers", json={"external_id": f"bench-{i}", "name": f"Bench {i}"}
                    ).raise_for_status()
                customer_id = api.get("/v1/customers", params={"limit": 1}).json()["items"][0]["id"]
            with httpx.Client(base_url=server.base_url, timeout=30) as browser:
                token = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/signin").text)
                assert token is not None
                browser.post("/signin", data={"api_key": tenant.api_key, "csrf_token": token.group(1)})
                print(f"{db.backend}, {args.customers} customers, {args.requests} requests per page")
                pages = {
                    "customer list": "/customers",
                    "customer search": "/customers?q=bench-1",
                    "customer page": f"/customers/{customer_id}",
                    "sync jobs": "/sync-jobs",
                    "webhook deliveries": "/webhook-events",
                    "settings > integrations": "/settings/integrations",
                }
                for name, path in pages.items():
                    times = sorted(timed(browser, path, args.requests))
                    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
                    print(f"  {name:24} median {statistics.median(times):6.1f} ms   p95 {p95:6.1f} ms")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
