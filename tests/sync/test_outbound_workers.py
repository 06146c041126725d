"""`flexsync serve --no-worker` plus separate `flexsync worker` processes: a worker killed mid-job, and on
PostgreSQL several workers sharing the work.

Stripe is localstripe behind the fault-injecting stand-in of tests/stripe_standin.py, which is needed here
because localstripe ignores Idempotency-Key: the stand-in replays a repeated key as Stripe does, can hold a
create after committing it (so a worker can be killed while waiting for the answer), and counts the creates
that reached localstripe for each flexsync customer.
"""

from __future__ import annotations

import asyncio
import bisect
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    DatabaseUnderTest,
    Server,
    drop_every_connection,
    start_server,
    wait_for,
)
from tests.sync_support import Process, StandIn, SyncTenant, start_worker, sync_tenant


@pytest.fixture(scope="module")
def api_server(module_db: DatabaseUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(module_db, tmp_path_factory.mktemp("workers-logs"), "--no-worker")
    yield running
    running.stop()


@pytest.fixture
def workers(module_db: DatabaseUnderTest, standin: StandIn, tmp_path: Path) -> Iterator[Any]:
    """Starts `flexsync worker` processes on demand; stops whatever is left at the end of the test."""
    started: list[Process] = []

    def start(*args: str, **env: str) -> Process:
        settings = {
            "FLEXSYNC_STRIPE_API_BASE": standin.base_url,
            "FLEXSYNC_JOB_POLL_INTERVAL": "0.2",
            # Outbound alone: a worker's catch-up would link customers from their Stripe events meanwhile.
            "FLEXSYNC_STRIPE_CATCHUP_INTERVAL_SECONDS": "0",
            **env,
        }
        process = start_worker(module_db, tmp_path, *args, **settings)
        started.append(process)
        return process

    standin.reset()
    yield start
    for process in started:
        process.stop()
    standin.reset()


@pytest.fixture
def env(module_db: DatabaseUnderTest, api_server: Server) -> Iterator[SyncTenant]:
    with sync_tenant(module_db, api_server.base_url, {"rate_limit": 1000}) as tenant:
        yield tenant


def test_a_separate_worker_runs_the_jobs_the_api_queued(env: SyncTenant, workers: Any, standin: StandIn) -> None:
    waiting = env.create(email="early@example.com")
    assert env.sync(waiting["id"])["link_status"] == "pending"
    worker = workers("--concurrency", "2")
    env.wait_linked(waiting["id"])

    later = env.create()
    assert env.api.put(f"/v1/customers/{later['id']}", json={"name": "Changed"}).status_code == 200
    env.wait_linked(later["id"])
    env.wait_settled(later["id"])
    assert {standin.creates_for(waiting["id"]), standin.creates_for(later["id"])} == {1}
    assert all(job["status"] == "succeeded" for job in env.jobs())
    worker.stop()
    assert worker.process.returncode == 0
    assert "sync worker stopped" in worker.log()


def test_a_worker_killed_mid_job_is_taken_over_and_the_job_completes_once(
    env: SyncTenant, workers: Any, standin: StandIn
) -> None:
    standin.faults({"method": "POST", "path": "/v1/customers", "action": "hold"})
    # A short lease, so the job is taken over within seconds of the kill.
    first = workers(FLEXSYNC_JOB_LEASE_SECONDS="2")
    customer = env.create()
    wait_for(lambda: standin.stats()["held"] == 1, what="the create to reach Stripe")
    assert standin.creates_for(customer["id"]) == 1
    first.kill()
    standin.release()

    workers(FLEXSYNC_JOB_LEASE_SECONDS="2")
    stripe_id = env.wait_linked(customer["id"])
    (job,) = env.jobs(customer_id=customer["id"])
    assert (job["status"], job["attempts"]) == ("succeeded", 2)
    stats = standin.stats()
    assert stats["creates"][customer["id"]] == 1 and stats["replays"] == 1
    assert env.sync(customer["id"])["stripe_customer_id"] == stripe_id


def test_four_workers_share_500_customers_without_doing_anything_twice(
    module_db: DatabaseUnderTest, env: SyncTenant, workers: Any, standin: StandIn
) -> None:
    if module_db.backend != "postgresql":
        pytest.skip("several workers share one database on PostgreSQL (SQLite has a single writer)")
    processes = [workers("--concurrency", "8") for _ in range(4)]

    def create(n: int) -> str:
        with env.tenant.client() as api:
            response = api.post("/v1/customers", json={"external_id": f"bulk-{n}", "name": f"Bulk {n}"})
            assert response.status_code == 201, response.text
            customer_id: str = response.json()["id"]
            return customer_id

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(create, range(500)))

    def all_succeeded() -> bool:
        body = env.api.get("/v1/sync-jobs", params={"status": "succeeded", "limit": 1}).json()
        return bool(body["pagination"]["total"] == 500)

    wait_for(all_succeeded, timeout=120, what="500 create jobs to succeed")
    jobs = env.jobs()
    assert len(jobs) == 500 and all(job["attempts"] == 1 for job in jobs)
    stats = standin.stats()
    assert stats["requests"]["POST /v1/customers"] == 500 and stats["replays"] == 0
    assert sorted(stats["creates"]) == sorted(ids) and set(stats["creates"].values()) == {1}
    customers = env.api.get("/v1/customers", params={"limit": 1000}).json()["items"]
    stripe_ids = {c["metadata"]["stripe_customer_id"] for c in customers}
    assert len(customers) == 500 and len(stripe_ids) == 500
    busy = [p for p in processes if '"sync job succeeded"' in p.log()]
    assert len(busy) >= 2, "the work should be shared between the workers"


def test_workers_together_keep_to_the_connections_rate_limit(
    module_db: DatabaseUnderTest, api_server: Server, workers: Any, standin: StandIn
) -> None:
    """Three worker processes, one connection limited to 5 requests/s: Stripe sees that rate from all of them
    together, not 5/s from each. (This checks a rate, which the shared schedule guarantees however slow the
    machine is: a slower machine only spreads the requests further apart.)"""
    rate, window = 5, 2.0
    with sync_tenant(module_db, api_server.base_url, {"rate_limit": rate}) as env:
        ids = [env.create()["id"] for _ in range(30)]  # queued before any worker runs: a backlog
        for _ in range(3):
            workers("--concurrency", "4")
        for customer_id in ids:
            env.wait_linked(customer_id, timeout=60)

    arrivals = sorted(standin.stats()["arrivals"]["POST /v1/customers"])
    assert len(arrivals) == 30 and {standin.creates_for(customer_id) for customer_id in ids} == {1}
    busiest = max(bisect.bisect_right(arrivals, start + window) - i for i, start in enumerate(arrivals))
    # `window` seconds hold rate * window slots, one more at the edges, and one for network jitter.
    assert busiest <= rate * window + 2, arrivals


def test_connections_dropped_again_and_again_mid_push_never_make_a_second_stripe_customer(
    module_db: DatabaseUnderTest, env: SyncTenant, workers: Any, standin: StandIn
) -> None:
    """Two running workers push 60 new customers while PostgreSQL drops every connection every 0.2 s (a restart
    or failover, again and again). The first eight creates reach Stripe and their answers are held until the
    drops have begun, so their results meet dead connections; a job whose result was not recorded runs again
    and gets Stripe's stored answer. Every customer reaches Stripe once; no worker exits."""
    if module_db.backend != "postgresql":
        pytest.skip("connections to drop are PostgreSQL's")
    create = {"method": "POST", "path": "/v1/customers"}
    standin.faults(
        {**create, "action": "hold", "count": 8}, {**create, "action": "delay", "seconds": 0.1, "count": 200}
    )
    pushing = [workers("--concurrency", "4", FLEXSYNC_JOB_LEASE_SECONDS="2") for _ in range(2)]
    ids = [env.create(external_id=f"failover-{n}")["id"] for n in range(60)]
    wait_for(lambda: standin.stats()["held"] == 8, what="eight creates to reach Stripe and wait")
    stop = threading.Event()
    dropped: list[int] = []

    def drop_until_stopped() -> None:
        while not stop.wait(0.2):
            dropped.append(asyncio.run(drop_every_connection(module_db.url)))

    dropper = threading.Thread(target=drop_until_stopped)
    dropper.start()
    try:
        wait_for(lambda: len(dropped) >= 3, what="the drops to begin")
        standin.release()
        wait_for(
            lambda: len(standin.stats()["creates"]) == len(ids) and len(dropped) >= 10,
            timeout=90,
            what="every create to reach Stripe while the connections are dropped",
        )
    finally:
        stop.set()
        dropper.join()
    assert sum(dropped) > 0

    def all_succeeded() -> bool:
        answer = env.api.get("/v1/sync-jobs", params={"status": "succeeded", "limit": 1})
        # The API server's own connections were dropped too: its next request on each may fail once.
        return answer.status_code == 200 and answer.json()["pagination"]["total"] == len(ids)

    wait_for(all_succeeded, timeout=120, what="every create job to succeed")
    assert [worker.process.poll() for worker in pushing] == [None, None], "the workers ride out the drops"
    stats = standin.stats()
    assert sorted(stats["creates"]) == sorted(ids) and set(stats["creates"].values()) == {1}
    customers = env.api.get("/v1/customers", params={"limit": 1000}).json()["items"]
    assert len({c["metadata"]["stripe_customer_id"] for c in customers}) == len(ids)
