"""The cost of an `Idempotency-Key` on `POST /v1/customers` (PostgreSQL).

One `flexsync serve --no-worker` on a fresh PostgreSQL database (an environment with a Stripe connection, so
each create also queues its push job, as in production; no worker runs them). 32 clients (one aiohttp session,
32 tasks, each keeping one request in flight) create customers, every one a new customer: for `--requests`
creates without a key, then as many with a key each (a new key per create, as a client makes one per logical
request), alternating which goes first from round to round; `--warmup` creates of each kind before the first
round. Reported per round and as medians over the rounds: p50, p99 and throughput of each kind, and the keyed
figures relative to the plain ones.

    python bench/idempotency.py --pg postgresql://postgres@127.0.0.1:5432/postgres --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

import aiohttp
from cryptography.fernet import Fernet

from measure import cpu_seconds
from webhook_ingest import flexsync_env, fresh_database, issue_api_key, seed_flexsync, start_serve, stop


async def _create(session: aiohttp.ClientSession, url: str, keyed: bool, latencies: list[float]) -> None:
    body = {"external_id": f"bench-{uuid.uuid4().hex}", "name": "Ada Lovelace", "email": "ada@example.com"}
    headers = {"Idempotency-Key": str(uuid.uuid4())} if keyed else {}
    started = time.perf_counter()
    async with session.post(url, json=body, headers=headers) as response:
        await response.read()
        if response.status != 201:
            raise RuntimeError(f"{response.status}: {await response.text()}")
    latencies.append(time.perf_counter() - started)


def _load(base_url: str, api_key: str, clients: int, requests: int, keyed: bool, server_pid: int) -> dict[str, Any]:
    """One kind's creates; adds the server's CPU time per create (from /proc)."""
    before = cpu_seconds(server_pid)
    figures = asyncio.run(_creates(base_url, api_key, clients, requests, keyed))
    figures["server_cpu_us"] = round((cpu_seconds(server_pid) - before) / requests * 1e6)
    return figures


async def _creates(base_url: str, api_key: str, clients: int, requests: int, keyed: bool) -> dict[str, Any]:
    url = f"{base_url}/v1/customers"
    latencies: list[float] = []
    remaining = requests
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, headers={"x-api-key": api_key}) as session:

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await _create(session, url, keyed, latencies)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "per_s": round(len(latencies) / elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", required=True, help="an admin DSN: each run creates and drops its own database")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=3000, help="creates per kind per round")
    parser.add_argument("--warmup", type=int, default=500)
    args = parser.parse_args()

    encryption_key = Fernet.generate_key().decode()
    with fresh_database(args.pg) as dsn:
        database_url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
        env = flexsync_env(database_url, encryption_key)
        tenant_id, environment_id = seed_flexsync(database_url, encryption_key, env)
        api_key = issue_api_key(database_url, tenant_id, environment_id)
        server, base_url = start_serve(env)
        try:
            for keyed in (False, True):
                _load(base_url, api_key, args.clients, args.warmup, keyed, server.pid)
            results: dict[str, list[dict[str, Any]]] = {"plain": [], "keyed": []}
            for round_number in range(args.rounds):
                order = (False, True) if round_number % 2 == 0 else (True, False)
                for keyed in order:
                    figures = _load(base_url, api_key, args.clients, args.requests, keyed, server.pid)
                    results["keyed" if keyed else "plain"].append(figures)
                    print(json.dumps({"round": round_number + 1, "kind": "keyed" if keyed else "plain", **figures}))
        finally:
            stop(server)

    medians = {
        kind: {
            name: statistics.median(run[name] for run in runs)
            for name in ("p50_ms", "p99_ms", "per_s", "server_cpu_us")
        }
        for kind, runs in results.items()
    }
    plain, keyed_medians = medians["plain"], medians["keyed"]
    print(
        json.dumps(
            {
                "medians": medians,
                "keyed_vs_plain": {
                    "p50": round(keyed_medians["p50_ms"] / plain["p50_ms"], 3),
                    "p99": round(keyed_medians["p99_ms"] / plain["p99_ms"], 3),
                    "throughput": round(keyed_medians["per_s"] / plain["per_s"], 3),
                    "server_cpu": round(keyed_medians["server_cpu_us"] / plain["server_cpu_us"], 3),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
