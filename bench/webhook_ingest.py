"""Webhook ingest benchmark (issue 3): flexsync against the reference receiver, alternating, on PostgreSQL.

Each round runs both receivers one after the other (the order alternates between rounds), each on a fresh
database, with the same signed `customer.created` / `customer.updated` events from
`../shared/bench/webhook_load.py` (32 concurrent clients by default):

- flexsync: `flexsync serve --no-worker` with one tenant, environment and Stripe connection. Reported: the
  acknowledged events/s and p50/p99 from the load generator, and the end-to-end rate: events until every one
  of them is applied to its customer (the load's time plus the time the last events took to be applied after
  the load ended). Afterwards the rows are counted: every event stored once, one customer and one link per
  Stripe customer, no event applied twice.
- the reference: `reference_app.py`'s `/webhook-db-lean` (verify_header, one upsert and one commit per event),
  whose acknowledged rate is its end-to-end rate.

For both, the CPU time per event of the server process, of PostgreSQL and of the load generator during the
load is reported too, and the server's peak resident memory: on a small machine where the load generator,
the server and PostgreSQL share the cores, it tells whether a receiver is bound by CPU or by waiting (and the
load generator's CPU per event, the same work for both, gauges how fast the machine was during the run).

Usage (PostgreSQL must be reachable; the script creates and drops its own databases):

    python bench/webhook_ingest.py --pg postgresql://postgres@127.0.0.1:5432/postgres --rounds 3

With `--baseline SRC` (the `src/` of another checkout, e.g. a `git worktree` of an earlier commit) the runs
compare flexsync with that version of itself instead of the reference: the same venv, the same load, the
baseline's server run with SRC first on PYTHONPATH and its database migrated by its own migrations; the order
alternates by round (baseline first, then this checkout first, ...), since the second run of a pair tends to
come out a few percent ahead on a small machine. Use an even number of rounds.

`--ceiling` adds, to every round, the reference app's `/webhook-lean` (signature check and JSON parsing, no
database): the machine's HTTP ceiling, which tells how this machine compares with the issue's (about 13,800/s
there). `--processes N` runs flexsync with `serve --processes N` (server CPU and memory are summed over its
processes). `--flush-delay-us US` runs both receivers on a private PostgreSQL cluster whose every flush to
disk waits US microseconds first (`slow_disk.py`): a disk that much slower than this machine's (`--pg` is then
not used); the commit time measured on it is printed first. `--sqlite` runs flexsync on a temporary SQLite
file instead (the embedded default; with `--baseline`, or `--only flexsync`, since the reference has no SQLite
route).

Prints one line per run and the medians, and with --json one JSON object at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from cryptography.fernet import Fernet

from measure import cpu_seconds, free_port, peak_rss_kb, process_tree
from slow_disk import slow_flush_cluster

ROOT = Path(__file__).resolve().parents[1]
KIT = (ROOT / ".." / "shared" / "bench").resolve()
SECRET = "whsec_bench_webhook_ingest"
SETTLED = ("applied", "ignored")


def _postgres_cpu_seconds() -> float:
    """CPU time of every PostgreSQL process on this machine (backends come and go; the run's own dominate)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as comm:
                    if comm.read().strip() != "postgres":
                        continue
            except OSError:
                continue
            total += cpu_seconds(int(entry))
    return total


def _children_cpu_seconds() -> float:
    """CPU time of this script's finished children (the load generator, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(url)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@contextmanager
def fresh_database(admin_dsn: str) -> Iterator[str]:
    """A new PostgreSQL database for one run, dropped afterwards; yields its asyncpg DSN."""
    name = f"bench_{uuid.uuid4().hex[:10]}"

    async def admin(*statements: str) -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            for sql in statements:
                await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        # The database name is the DSN's last path segment; a query (e.g. `?host=/var/run/postgresql`, the
        # server's Unix socket) is kept.
        base, _, query = admin_dsn.partition("?")
        yield base.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def fresh_sqlite() -> Iterator[str]:
    """A new SQLite file for one run, removed afterwards; yields its `sqlite:///` path."""
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-") as folder:
        yield f"sqlite:///{folder}/flexsync.db"


def _rows(dsn: str, sql: str) -> list[Any]:
    """Rows of `sql` on the run's database, PostgreSQL (asyncpg) or SQLite."""
    if dsn.startswith("sqlite:///"):
        with sqlite3.connect(dsn.removeprefix("sqlite:///")) as conn:
            conn.row_factory = sqlite3.Row
            return conn.execute(sql).fetchall()

    async def fetch() -> list[Any]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(fetch())


def run_load(args: argparse.Namespace, url: str, label: str, extra: list[str], server_pid: int) -> dict[str, Any]:
    """Run the load generator; adds the server's and PostgreSQL's CPU time per event (warm-up included, from
    /proc; PostgreSQL counts all its processes on this machine)."""
    command = [
        sys.executable,
        str(KIT / "webhook_load.py"),
        "--url",
        url,
        "--secret",
        SECRET,
        "--count",
        str(args.count),
        "--concurrency",
        str(args.concurrency),
        "--seed",
        str(args.seed),
        "--warmup",
        str(args.warmup),
        "--json",
        "--label",
        label,
        *extra,
    ]
    servers = process_tree(server_pid)
    server_before, postgres_before = sum(map(cpu_seconds, servers)), _postgres_cpu_seconds()
    load_before = _children_cpu_seconds()
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    server_cpu = sum(map(cpu_seconds, servers)) - server_before
    postgres_cpu = _postgres_cpu_seconds() - postgres_before
    load_cpu = _children_cpu_seconds() - load_before
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    total = result["count"] + args.warmup
    result["server_cpu_us_per_event"] = round(server_cpu / total * 1e6)
    result["postgres_cpu_us_per_event"] = round(postgres_cpu / total * 1e6)
    result["load_cpu_us_per_event"] = round(load_cpu / total * 1e6)
    result["server_peak_rss_mb"] = round(sum(map(peak_rss_kb, servers)) / 1024, 1)
    return result


# -- flexsync ---------------------------------------------------------------------------------------------------


def seed_flexsync(database_url: str, encryption_key: str, env: dict[str, str]) -> tuple[str, str]:
    """Migrate (with the migrations of the flexsync that `env` runs), then create a tenant, an environment and
    an active Stripe connection signing with SECRET."""
    from flexsync.crypto import SecretBox
    from flexsync.db import create_engine, session_factory, transaction
    from flexsync.ids import new_id
    from flexsync.models import StripeConnection
    from flexsync.tenancy import service as tenancy

    subprocess.run([sys.executable, "-m", "flexsync", "migrate"], env=env, check=True, capture_output=True)

    async def seed() -> tuple[str, str]:
        engine = create_engine(database_url, null_pool=True)
        box = SecretBox([encryption_key])
        try:
            async with transaction(session_factory(engine)) as session:
                tenant = await tenancy.create_tenant(session, "Bench")
                env = await tenancy.create_environment(session, tenant.id, "bench")
                session.add(
                    StripeConnection(
                        id=new_id("conn"),
                        tenant_id=tenant.id,
                        environment_id=env.id,
                        name="Bench Stripe",
                        mode="test",
                        secret_key_encrypted=box.encrypt("sk_test_bench"),
                        secret_key_last4="ench",
                        publishable_key="pk_test_bench",
                        webhook_secrets_encrypted=[box.encrypt(SECRET)],
                        settings={},
                    )
                )
                return tenant.id, env.id
        finally:
            await engine.dispose()

    return asyncio.run(seed())


def issue_api_key(database_url: str, tenant_id: str, environment_id: str) -> str:
    """An API key of the seeded environment, for benchmarks that call the API."""
    from flexsync.db import create_engine, session_factory, transaction
    from flexsync.tenancy import service as tenancy

    async def issue() -> str:
        engine = create_engine(database_url, null_pool=True)
        try:
            async with transaction(session_factory(engine)) as session:
                return (await tenancy.create_api_key(session, tenant_id, environment_id, "bench")).key
        finally:
            await engine.dispose()

    return asyncio.run(issue())


def flexsync_env(database_url: str, encryption_key: str, src: str | None = None) -> dict[str, str]:
    """The environment a benchmarked flexsync runs with: this checkout's, or the one whose `src/` is `src`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXSYNC_")}
    env.update(
        FLEXSYNC_DATABASE_URL=database_url,
        FLEXSYNC_ENCRYPTION_KEYS=encryption_key,
        FLEXSYNC_LOG_LEVEL="warning",
        FLEXSYNC_LOG_FORMAT="json",
    )
    if src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return env


def start_serve(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[bytes], str]:
    """`flexsync serve --no-worker [args]` on a free port with `env`, once it answers; the process and its base
    URL."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "flexsync", "serve", "--no-worker", "--no-migrate", "--port", str(port), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base_url}/healthz", server)
    except Exception:
        stop(server)
        raise
    return server, base_url


def _event_counts(dsn: str) -> dict[str, int]:
    return {
        row["status"]: row["n"]
        for row in _rows(dsn, "SELECT status, count(*) AS n FROM webhook_events GROUP BY status")
    }


def _integrity(dsn: str) -> dict[str, int]:
    (row,) = _rows(
        dsn,
        """
        SELECT
          (SELECT count(*) FROM webhook_events) AS events,
          (SELECT count(DISTINCT stripe_event_id) FROM webhook_events) AS distinct_events,
          (SELECT count(DISTINCT stripe_object_id) FROM webhook_events) AS stripe_customers,
          (SELECT count(*) FROM customers) AS customers,
          (SELECT count(*) FROM customer_links) AS links,
          (SELECT count(*) FROM webhook_events
            WHERE status = 'applied' AND customer_id IS NULL) AS applied_without_customer,
          (SELECT count(*) FROM webhook_events WHERE attempts > 1) AS applied_more_than_once,
          (SELECT count(*) FROM (SELECT stripe_customer_id FROM customer_links
                                 GROUP BY stripe_customer_id HAVING count(*) > 1) AS d) AS duplicate_links
        """,
    )
    return dict(row)


def run_flexsync(args: argparse.Namespace, admin_dsn: str, label: str, src: str | None = None) -> dict[str, Any]:
    """One run of flexsync: this checkout's, or the one whose `src/` is `src`."""
    with fresh_sqlite() if args.sqlite else fresh_database(admin_dsn) as dsn:
        database_url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1).replace(
            "sqlite:", "sqlite+aiosqlite:", 1
        )
        key = Fernet.generate_key().decode()
        env = flexsync_env(database_url, key, src)
        tenant_id, environment_id = seed_flexsync(database_url, key, env)
        server, base_url = start_serve(env, *(["--processes", str(args.processes)] if args.processes > 1 else []))
        try:
            url = f"{base_url}/v1/webhooks/stripe/{{tenant_id}}/{{environment_id}}"
            load = run_load(args, url, label, ["--tenants", tenant_id, "--environments", environment_id], server.pid)
            load_ended = time.perf_counter()
            expected = args.count + args.warmup
            while True:
                counts = _event_counts(dsn)
                if sum(counts.get(status, 0) for status in SETTLED) >= expected:
                    break
                if time.perf_counter() - load_ended > 60:
                    raise RuntimeError(f"events not applied within 60 s: {counts}")
                time.sleep(0.005)
            drain = time.perf_counter() - load_ended
            integrity = _integrity(dsn)
        finally:
            stop(server)
    end_to_end = load["count"] / (load["elapsed_s"] + drain)
    return {
        **load,
        "drain_s": round(drain, 3),
        "end_to_end_per_s": round(end_to_end, 1),
        "statuses": counts,
        **integrity,
    }


# -- the reference ----------------------------------------------------------------------------------------------


async def _reference_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM bench_customers")
        return count
    finally:
        await conn.close()


def _serve_reference(args: argparse.Namespace, label: str, route: str, database_env: dict[str, str]) -> dict[str, Any]:
    port = free_port()
    env = dict(os.environ, WEBHOOK_SECRET=SECRET, **database_env)
    command = [sys.executable, "-m", "uvicorn", "reference_app:app", "--app-dir", str(KIT), "--host"]
    command += ["127.0.0.1", "--port", str(port), "--workers", "1", "--loop", "uvloop", "--http", "httptools"]
    command += ["--no-access-log", "--log-level", "warning"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{port}/", server)
        return run_load(args, f"http://127.0.0.1:{port}{route}", label, [], server.pid)
    finally:
        stop(server)


def run_reference(args: argparse.Namespace, admin_dsn: str, label: str) -> dict[str, Any]:
    with fresh_database(admin_dsn) as dsn:
        load = _serve_reference(args, label, "/webhook-db-lean", {"DATABASE_URL": dsn})
        rows = asyncio.run(_reference_rows(dsn))
    return {**load, "end_to_end_per_s": load["ok_per_s"], "rows": rows}


def run_ceiling(args: argparse.Namespace, _admin_dsn: str, label: str) -> dict[str, Any]:
    """The reference app's `/webhook-lean`: signature check and JSON parsing, no database. How fast this
    machine's HTTP stack and load generator go at all: the issue's calibration machine did about 13,800/s."""
    load = _serve_reference(args, label, "/webhook-lean", {})
    return {**load, "end_to_end_per_s": load["ok_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres", help="admin DSN")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=["flexsync", "reference"], help="run one receiver only")
    parser.add_argument("--baseline", metavar="SRC", help="compare with the flexsync in SRC instead of the reference")
    parser.add_argument("--processes", type=int, default=1, help="flexsync's server processes (serve --processes)")
    parser.add_argument(
        "--flush-delay-us",
        type=int,
        default=0,
        metavar="US",
        help="run on a private PostgreSQL cluster whose every flush waits this long: a slower disk than this one's",
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="also run the reference's no-database route each round: the machine's HTTP ceiling",
    )
    parser.add_argument(
        "--sqlite",
        action="store_true",
        help="run flexsync on a SQLite file (with --baseline: the reference has no SQLite route)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object at the end")
    args = parser.parse_args()
    if args.sqlite and not (args.baseline or args.only == "flexsync"):
        parser.error("--sqlite compares flexsync with itself: give --baseline SRC, or --only flexsync")
    if args.flush_delay_us:
        with slow_flush_cluster(args.flush_delay_us) as (admin_dsn, commit_ms):
            print(f"private cluster, each flush delayed {args.flush_delay_us} us: one commit takes {commit_ms:.2f} ms")
            compare(args, admin_dsn)
    else:
        compare(args, args.pg)


def compare(args: argparse.Namespace, admin_dsn: str) -> None:
    """The rounds, each receiver's line, and the medians, against the PostgreSQL at `admin_dsn`."""
    other = "baseline" if args.baseline else "reference"
    results: dict[str, list[dict[str, Any]]] = {"flexsync": [], other: [], "ceiling": []}
    runners: dict[str, Callable[[argparse.Namespace, str, str], dict[str, Any]]] = {
        "flexsync": run_flexsync,
        "reference": run_reference,
        "ceiling": run_ceiling,
        "baseline": lambda *run: run_flexsync(*run, src=str(Path(args.baseline).resolve())),
    }
    for round_number in range(args.rounds):
        order = [other, "flexsync"] if round_number % 2 == 0 else ["flexsync", other]
        for name in ["ceiling", *order] if args.ceiling else order:
            if args.only and name != args.only:
                continue
            result = runners[name](args, admin_dsn, f"{name}#{round_number + 1}")
            results[name].append(result)
            line = (
                f"{result['label']:<12} acked {result['ok_per_s']:>7.0f}/s"
                f"  end-to-end {result['end_to_end_per_s']:>7.0f}/s"
                f"  p50 {result['p50_ms']:>5.1f} ms  p99 {result['p99_ms']:>5.1f} ms  codes {result['codes']}"
                f"  cpu/event server {result['server_cpu_us_per_event']} us"
                f" postgres {result['postgres_cpu_us_per_event']} us"
                f" load {result['load_cpu_us_per_event']} us  server peak rss {result['server_peak_rss_mb']} MiB"
            )
            if name in ("flexsync", "baseline"):
                line += (
                    f"  drain {result['drain_s']:.3f} s  events {result['events']} customers {result['customers']}"
                    f" links {result['links']} twice {result['applied_more_than_once']} statuses {result['statuses']}"
                )
            elif name == "reference":
                line += f"  rows {result['rows']}"
            print(line, flush=True)

    summary: dict[str, Any] = {}
    for name, runs in results.items():
        if runs:
            summary[name] = {
                metric: statistics.median(run[metric] for run in runs)
                for metric in (
                    "ok_per_s",
                    "end_to_end_per_s",
                    "p50_ms",
                    "p99_ms",
                    "server_cpu_us_per_event",
                    "postgres_cpu_us_per_event",
                    "load_cpu_us_per_event",
                    "server_peak_rss_mb",
                )
            }
    if "flexsync" in summary and other in summary:
        summary["end_to_end_ratio"] = round(
            summary["flexsync"]["end_to_end_per_s"] / summary[other]["end_to_end_per_s"], 2
        )
        # The machine's speed drifts from minute to minute: each round's two runs, back to back, are the fair
        # comparison. How many rounds flexsync won, and the median of the rounds' ratios.
        pairs = [
            mine["end_to_end_per_s"] / theirs["end_to_end_per_s"]
            for mine, theirs in zip(results["flexsync"], results[other], strict=False)
        ]
        summary["rounds_won"] = f"{sum(ratio > 1 for ratio in pairs)} of {len(pairs)}"
        summary["median_round_ratio"] = round(statistics.median(pairs), 3)
        print(
            f"flexsync against {other}, round by round: won {summary['rounds_won']}, "
            f"ratios {', '.join(f'{ratio:.2f}' for ratio in pairs)}",
            flush=True,
        )
    print("medians:", json.dumps(summary), flush=True)
    if args.json:
        print(json.dumps({"runs": results, "medians": summary}, default=str))


if __name__ == "__main__":
    main()
