"""The API's lists on PostgreSQL when an environment holds millions of rows.

Builds one database: a tenant, an environment, a Stripe connection, `--events` stored webhook events (a busy
account's months: mostly `applied`, 1 in 1,000 `failed`, 1 in 97 `ignored`, a few `customer.deleted`),
`--customers` customers (1 in 20 archived; metadata `plan` gold, silver or bronze, `region` one of five, and
`tier: vip` on 1 in 1,000) and as many sync jobs (mostly `succeeded`, 1 in 500 `failed`), vacuumed and
analysed as autovacuum would leave them. Then `flexsync serve --no-worker` answers each list's first page (50
items, with its total), unfiltered and filtered, and FlexPrice's customer search (`POST /v1/customers/search`)
by metadata, by a filter condition and sorted; each is asked `--requests` times and the median reported. With
`--baseline SRC` (the `src/` of another checkout) each round runs that version too on the same database,
alternating which goes first.

    python bench/lists_large.py [--events 2000000] [--customers 500000] [--rounds 3] [--baseline ../wt-base/src]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
from cryptography.fernet import Fernet

from webhook_ingest import flexsync_env, fresh_database, issue_api_key, seed_flexsync, start_serve, stop

QUERIES = {
    "events": ("/v1/webhook-events", {}),
    "events status=failed": ("/v1/webhook-events", {"status": "failed"}),
    "events status=applied": ("/v1/webhook-events", {"status": "applied"}),
    "events type=customer.deleted": ("/v1/webhook-events", {"type": "customer.deleted"}),
    "customers": ("/v1/customers", {}),
    "customers status=all": ("/v1/customers", {"status": "all"}),
    "sync-jobs": ("/v1/sync-jobs", {}),
    "sync-jobs status=failed": ("/v1/sync-jobs", {"status": "failed"}),
}
# FlexPrice's customer search: bodies of POST /v1/customers/search.
SEARCHES: dict[str, dict[str, Any]] = {
    "search metadata tier=vip": {"metadata": {"tier": "vip"}},
    "search metadata plan=gold,region=eu": {"metadata": {"plan": "gold", "region": "eu"}},
    "search sort name": {"sort": [{"field": "name", "direction": "asc"}]},
    "search sort email desc,name": {"sort": [{"field": "email", "direction": "desc"}, {"field": "name"}]},
    "search filter name contains": {
        "filters": [{"field": "name", "operator": "contains", "data_type": "string", "value": {"string": "er 4242"}}]
    },
}

FILL = """
INSERT INTO webhook_events (id, tenant_id, environment_id, connection_id, stripe_event_id, type, stripe_object_id,
    stripe_created, livemode, payload, status, attempts, received_at, processed_at)
SELECT 'whevt_' || lpad(g::text, 12, '0'), $1, $2, $3, 'evt_' || g,
    CASE WHEN g % 50 = 0 THEN 'customer.deleted' WHEN g % 2 = 0 THEN 'customer.updated' ELSE 'customer.created' END,
    'cus_' || (g / 3), 1700000000 + g, false, repeat('x', 600),
    CASE WHEN g % 1000 = 0 THEN 'failed' WHEN g % 97 = 0 THEN 'ignored' ELSE 'applied' END, 1,
    now() - make_interval(secs => ($4 - g) * 4), now()
FROM generate_series(1, $4) AS g
"""


FILL_CUSTOMERS = """
INSERT INTO customers (id, tenant_id, environment_id, external_id, name, email, metadata, status, version,
    created_at, updated_at, created_by, updated_by)
SELECT 'cust_' || lpad(g::text, 12, '0'), $1, $2, 'crm-' || g, 'Customer ' || g, 'c' || g || '@example.com',
    jsonb_build_object('plan', (ARRAY['gold', 'silver', 'bronze'])[g % 3 + 1],
        'region', (ARRAY['eu', 'us', 'apac', 'latam', 'mea'])[g % 5 + 1])
        || CASE WHEN g % 1000 = 0 THEN '{"tier": "vip"}'::jsonb ELSE '{}'::jsonb END,
    CASE WHEN g % 20 = 0 THEN 'archived' ELSE 'published' END, 1,
    now() - make_interval(secs => ($3 - g) * 10), now(), 'key_bench', 'key_bench'
FROM generate_series(1, $3) AS g
"""
FILL_JOBS = """
INSERT INTO sync_jobs (id, tenant_id, environment_id, connection_id, customer_id, kind, status, attempts,
    max_attempts, payload, idempotency_key, run_at, result, created_at, updated_at)
SELECT 'job_' || lpad(g::text, 12, '0'), $1, $2, $3, 'cust_' || lpad(g::text, 12, '0'), 'create_customer',
    CASE WHEN g % 500 = 0 THEN 'failed' ELSE 'succeeded' END, 1, 12, '{}', 'idem_' || g, now(), '{}',
    now() - make_interval(secs => ($4 - g) * 10), now()
FROM generate_series(1, $4) AS g
"""


async def _fill(dsn: str, tenant_id: str, environment_id: str, events: int, customers: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        connection_id = await conn.fetchval("SELECT id FROM connections WHERE environment_id = $1", environment_id)
        await conn.execute(FILL, tenant_id, environment_id, connection_id, events)
        await conn.execute(FILL_CUSTOMERS, tenant_id, environment_id, customers)
        await conn.execute(FILL_JOBS, tenant_id, environment_id, connection_id, customers)
        for table in ("webhook_events", "customers", "sync_jobs"):
            await conn.execute(f"VACUUM ANALYZE {table}")
    finally:
        await conn.close()


def _requests(client: httpx.Client) -> dict[str, Any]:
    """Each query's request, by label: a call that answers the response."""
    calls: dict[str, Any] = {
        label: (lambda path=path, params=params: client.get(path, params=params))
        for label, (path, params) in QUERIES.items()
    }
    for label, body in SEARCHES.items():
        calls[label] = lambda body=body: client.post("/v1/customers/search", json=body)
    return calls


def _time_lists(env: dict[str, str], api_key: str, requests: int) -> dict[str, float]:
    """Median milliseconds per query, on a server started with `env`."""
    server, base_url = start_serve(env)
    try:
        medians = {}
        with httpx.Client(base_url=base_url, headers={"x-api-key": api_key}, timeout=60) as client:
            for label, call in _requests(client).items():
                call().raise_for_status()  # warm: plans, caches
                times = []
                for _ in range(requests):
                    started = time.perf_counter()
                    call().raise_for_status()
                    times.append((time.perf_counter() - started) * 1000)
                medians[label] = round(statistics.median(times), 1)
        return medians
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres", help="admin DSN")
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--customers", type=int, default=500_000, help="customers, and as many sync jobs")
    parser.add_argument("--requests", type=int, default=7, help="requests per query and run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", metavar="SRC", help="compare with the flexsync in SRC")
    args = parser.parse_args()

    with fresh_database(args.pg) as dsn:
        database_url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
        key = Fernet.generate_key().decode()
        env = flexsync_env(database_url, key)
        tenant_id, environment_id = seed_flexsync(database_url, key, env)
        started = time.perf_counter()
        asyncio.run(_fill(dsn, tenant_id, environment_id, args.events, args.customers))
        print(
            f"stored {args.events:,} events, {args.customers:,} customers and sync jobs in "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )
        api_key = issue_api_key(database_url, tenant_id, environment_id)

        versions = {"flexsync": env}
        if args.baseline:
            versions["baseline"] = flexsync_env(database_url, key, args.baseline)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in versions}
        for round_number in range(args.rounds):
            order = list(versions) if round_number % 2 == 0 else list(reversed(versions))
            for name in order:
                medians = _time_lists(versions[name], api_key, args.requests)
                runs[name].append(medians)
                print(f"{name}#{round_number + 1:<3} " + ", ".join(f"{q} {ms} ms" for q, ms in medians.items()))

    summary: dict[str, Any] = {
        name: {q: statistics.median(run[q] for run in results) for q in [*QUERIES, *SEARCHES]}
        for name, results in runs.items()
    }
    print("medians (ms):", json.dumps(summary))


if __name__ == "__main__":
    main()
