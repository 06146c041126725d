"""Dashboard page latency: how long each server-rendered page takes, as a signed-in browser would ask for it.

Builds a fresh database (SQLite, or PostgreSQL with --pg): one tenant with a Stripe connection and `--customers`
customers made through the API (each with a pending create job, since no worker runs). Then `flexsync serve
--no-worker` is started, signed in to, and asked for every page `--requests` times over one keep-alive
connection; the median and p95 per page are printed. The customer list renders 25 customers, each with its
Stripe sync status.

With `--baseline SRC` (the `src/` of another checkout, e.g. `git archive` of an earlier commit) each of
`--rounds` rounds runs that version's server too, on the same database, alternating which goes first; the
summary gives each page's median over the rounds' medians.

Usage:
    python bench/dashboard_pages.py --sqlite [--baseline /tmp/base/src --rounds 3]
    python bench/dashboard_pages.py --pg postgresql+asyncpg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import os
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


def time_pages(
    db: DatabaseUnderTest, log_dir: Path, api_key: str, pages: dict[str, str], requests: int, **env: str
) -> dict[str, list[float]]:
    """Each page's times (ms) on a server started with `env`, signed in as a browser is."""
    server = start_server(db, log_dir, "--no-worker", **env)
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as browser:
            token = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/signin").text)
            assert token is not None
            signed = browser.post("/signin", data={"api_key": api_key, "csrf_token": token.group(1)})
            assert signed.status_code == 303, signed.text
            return {name: sorted(timed(browser, path, requests)) for name, path in pages.items()}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    backend = parser.add_mutually_exclusive_group(required=True)
    backend.add_argument("--sqlite", action="store_true")
    backend.add_argument("--pg", metavar="ADMIN_URL")
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baseline", metavar="SRC", help="also run the flexsync in SRC, alternating")
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
        finally:
            server.stop()
        pages = {
            "customer list": "/customers",
            "customer search": "/customers?q=bench-1",
            "customer page": f"/customers/{customer_id}",
            "sync jobs": "/sync-jobs",
            "webhook deliveries": "/webhook-events",
            "settings > integrations": "/settings/integrations",
        }
        versions: dict[str, dict[str, str]] = {"flexsync": {}}
        if args.baseline:
            src = str(Path(args.baseline).resolve())
            versions["baseline"] = {"PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
        print(f"{db.backend}, {args.customers} customers, {args.requests} requests per page and round")
        medians: dict[str, dict[str, list[float]]] = {name: {page: [] for page in pages} for name in versions}
        for round_number in range(args.rounds):
            order = list(versions) if round_number % 2 == 0 else list(reversed(versions))
            for name in order:
                times = time_pages(db, Path(tmp_dir), tenant.api_key, pages, args.requests, **versions[name])
                print(f"{name} #{round_number + 1}")
                for page, page_times in times.items():
                    p95 = page_times[min(len(page_times) - 1, round(0.95 * (len(page_times) - 1)))]
                    median = statistics.median(page_times)
                    medians[name][page].append(median)
                    print(f"  {page:24} median {median:6.1f} ms   p95 {p95:6.1f} ms")
        print("medians of the rounds' medians (ms):")
        for page in pages:
            row = "   ".join(f"{name} {statistics.median(medians[name][page]):6.1f}" for name in versions)
            print(f"  {page:24} {row}")


if __name__ == "__main__":
    main()
