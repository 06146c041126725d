"""API reads on SQLite while Stripe's webhooks are being ingested: does a read wait for the writers?

SQLite has one write lock. Each run starts `flexsync serve --no-worker` on a fresh SQLite file, then one client
asks `GET /v1/customers?limit=25` every 20 ms: for a few seconds with nothing else going on, then while
`../shared/bench/webhook_load.py` delivers signed `customer.created` / `customer.updated` events with 32
concurrent clients (every delivery a write). Reported: the reads' p50 / p90 / p99 / max, idle and during the
ingest, and the ingest's events/s.

With `--baseline SRC` (the `src/` of another checkout, e.g. a `git worktree` of an earlier commit) each round
runs that version too, alternating which goes first.

    python bench/api_reads_under_ingest.py --rounds 3 [--baseline ../wt-base/src]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet

from webhook_ingest import (
    KIT,
    SECRET,
    flexsync_env,
    fresh_sqlite,
    issue_api_key,
    seed_flexsync,
    start_serve,
    stop,
)

READ_EVERY_SECONDS = 0.02


def _read_until(client: httpx.Client, done: Callable[[], bool]) -> list[float]:
    """Milliseconds per read, one read every READ_EVERY_SECONDS, until `done()`."""
    latencies = []
    while not done():
        started = time.perf_counter()
        response = client.get("/v1/customers", params={"limit": 25})
        latencies.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"read answered {response.status_code}: {response.text[:200]}")
        time.sleep(READ_EVERY_SECONDS)
    return latencies


def _summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)

    def at(share: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * share))], 1)

    return {"reads": len(ordered), "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99), "max_ms": at(1.0)}


def run(args: argparse.Namespace, src: str | None) -> dict[str, Any]:
    with fresh_sqlite() as dsn:
        database_url = dsn.replace("sqlite:", "sqlite+aiosqlite:", 1)
        key = Fernet.generate_key().decode()
        env = flexsync_env(database_url, key, src)
        tenant_id, environment_id = seed_flexsync(database_url, key, env)
        api_key = issue_api_key(database_url, tenant_id, environment_id)
        server, base_url = start_serve(env)
        try:
            with httpx.Client(base_url=base_url, headers={"x-api-key": api_key}, timeout=60) as client:
                idle_until = time.monotonic() + args.idle_seconds
                idle = _read_until(client, lambda: time.monotonic() > idle_until)
                load_done = threading.Event()
                during: list[float] = []
                reader = threading.Thread(target=lambda: during.extend(_read_until(client, load_done.is_set)))
                reader.start()
                try:
                    command = [
                        sys.executable,
                        str(KIT / "webhook_load.py"),
                        "--url",
                        f"{base_url}/v1/webhooks/stripe/{{tenant_id}}/{{environment_id}}",
                        "--secret",
                        SECRET,
                        "--count",
                        str(args.count),
                        "--concurrency",
                        "32",
                        "--json",
                        "--tenants",
                        tenant_id,
                        "--environments",
                        environment_id,
                    ]
                    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                finally:
                    load_done.set()
                    reader.join()
        finally:
            stop(server)
    load = json.loads(output.strip().splitlines()[-1])
    return {"idle": _summary(idle), "during_ingest": _summary(during), "ingest_per_s": load["ok_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=6000, help="webhook deliveries per run")
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    parser.add_argument("--baseline", metavar="SRC", help="also run the flexsync in SRC, alternating")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    versions: dict[str, str | None] = {"flexsync": None}
    if args.baseline:
        versions["baseline"] = str(Path(args.baseline).resolve())
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in versions}
    for round_number in range(args.rounds):
        order = list(versions) if round_number % 2 == 0 else list(reversed(versions))
        for name in order:
            result = run(args, versions[name])
            results[name].append(result)
            busy, idle = result["during_ingest"], result["idle"]
            print(
                f"round {round_number + 1} {name}: reads during ingest p50 {busy['p50_ms']} / p90 {busy['p90_ms']} / "
                f"p99 {busy['p99_ms']} / max {busy['max_ms']} ms ({busy['reads']} reads); idle p50 {idle['p50_ms']} / "
                f"p99 {idle['p99_ms']} ms; ingest {result['ingest_per_s']:.0f} events/s",
                flush=True,
            )
    medians = {
        name: {
            "during_ingest": {
                key: round(statistics.median(r["during_ingest"][key] for r in runs), 1)
                for key in runs[0]["during_ingest"]
            },
            "idle": {key: round(statistics.median(r["idle"][key] for r in runs), 1) for key in runs[0]["idle"]},
            "ingest_per_s": statistics.median(r["ingest_per_s"] for r in runs),
        }
        for name, runs in results.items()
    }
    for name, median in medians.items():
        busy = median["during_ingest"]
        print(
            f"median {name}: during ingest p50 {busy['p50_ms']} / p90 {busy['p90_ms']} / p99 {busy['p99_ms']} / max "
            f"{busy['max_ms']} ms; idle p50 {median['idle']['p50_ms']} ms; ingest {median['ingest_per_s']:.0f} events/s"
        )
    if args.json:
        print(json.dumps({"runs": results, "medians": medians}))


if __name__ == "__main__":
    main()
