"""Outbound sync when Stripe misbehaves: rate limits, server errors, rejected requests, lost answers.

localstripe never answers 429 or 5xx and ignores Idempotency-Key, so these tests put the fault-injecting
stand-in of tests/stripe_standin.py between flexsync and localstripe. It forwards everything else to
localstripe, replays a stored answer for a repeated Idempotency-Key as Stripe does, and counts the creates
that really reached localstripe. A real `flexsync serve` with its embedded worker, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import (
    DatabaseUnderTest,
    LocalStripe,
    Server,
    start_server,
    wait_for,
)
from tests.sync_support import (
    STRIPE_TEST_KEY,
    StandIn,
    SyncTenant,
    stripe_customers_for,
    stripe_sdk,
    sync_tenant,
)

CREATE = {"method": "POST", "path": "/v1/customers"}
UPDATE = {"method": "POST", "path": "/v1/customers/[^/]+"}


@pytest.fixture(scope="module")
def fault_server(
    module_db: DatabaseUnderTest, standin: StandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    running = start_server(
        module_db,
        tmp_path_factory.mktemp("faults-logs"),
        FLEXSYNC_STRIPE_API_BASE=standin.base_url,
        FLEXSYNC_STRIPE_TIMEOUT_SECONDS="3",
    )
    yield running
    running.stop()


@pytest.fixture
def env(module_db: DatabaseUnderTest, fault_server: Server, standin: StandIn) -> Iterator[SyncTenant]:
    standin.reset()
    with sync_tenant(module_db, fault_server.base_url) as tenant:
        yield tenant
    standin.reset()


def only_job(env: SyncTenant, customer_id: str) -> dict[str, Any]:
    (job,) = env.jobs(customer_id=customer_id)
    return job


@pytest.mark.parametrize(
    "faults",
    [
        [{**CREATE, "action": "status", "status": 429, "count": 3, "message": "Too many requests"}],
        [
            {**CREATE, "action": "status", "status": 500, "count": 2},
            {**CREATE, "action": "status", "status": 503, "count": 1},
        ],
        [{**CREATE, "action": "status", "status": 409, "count": 1, "headers": {"Stripe-Should-Retry": "true"}}],
    ],
    ids=["429-burst", "5xx-burst", "409-should-retry"],
)
def test_retryable_answers_are_retried_until_the_create_succeeds(
    env: SyncTenant, standin: StandIn, faults: list[dict[str, Any]]
) -> None:
    standin.faults(*faults)
    customer = env.create()
    env.wait_linked(customer["id"])
    job = only_job(env, customer["id"])
    assert job["status"] == "succeeded" and job["last_error"] is None
    assert job["attempts"] == 1 + sum(fault["count"] for fault in faults)
    assert standin.creates_for(customer["id"]) == 1


def test_stripe_should_retry_false_fails_at_once(env: SyncTenant, standin: StandIn) -> None:
    standin.faults({**CREATE, "action": "status", "status": 500, "headers": {"Stripe-Should-Retry": "false"}})
    customer = env.create()
    status = env.wait_settled(customer["id"])
    job = only_job(env, customer["id"])
    assert (job["status"], job["attempts"]) == ("failed", 1)
    assert "Stripe answered 500" in job["last_error"] and status["last_error"] == job["last_error"]
    assert standin.creates_for(customer["id"]) == 0


def test_a_rejected_request_fails_with_stripes_message_and_can_be_retried(env: SyncTenant, standin: StandIn) -> None:
    message = "Invalid email address: ada@@example.com"
    standin.faults(
        {**CREATE, "action": "status", "status": 400, "error_type": "invalid_request_error", "message": message}
    )
    customer = env.create()
    status = env.wait_settled(customer["id"])
    assert status["link_status"] == "not_linked" and message in status["last_error"]
    (failed,) = env.jobs(status="failed")
    assert failed["customer_id"] == customer["id"] and failed["attempts"] == 1
    assert failed["last_error"] == f"Stripe answered 400: {message}"

    response = env.api.post(f"/v1/sync-jobs/{failed['id']}/retry")
    assert response.status_code == 202, response.text
    assert response.json()["status"] in ("pending", "running", "succeeded")
    stripe_id = env.wait_linked(customer["id"])
    status = env.wait_settled(customer["id"])
    assert status["last_error"] is None and status["stripe_customer_id"] == stripe_id
    job = only_job(env, customer["id"])
    assert (job["status"], job["attempts"], job["last_error"]) == ("succeeded", 1, None)


def test_an_error_naming_the_key_never_shows_it(env: SyncTenant, standin: StandIn) -> None:
    standin.faults(
        {
            **CREATE,
            "action": "status",
            "status": 401,
            "error_type": "invalid_request_error",
            "message": f"Invalid API Key provided: {STRIPE_TEST_KEY}",
        }
    )
    customer = env.create()
    status = env.wait_settled(customer["id"])
    assert status["last_error"].startswith("Stripe answered 401: Invalid API Key provided: sk_test_")
    assert STRIPE_TEST_KEY not in status["last_error"]
    assert STRIPE_TEST_KEY not in env.api.get("/v1/sync-jobs").text


def test_a_create_whose_answer_was_lost_is_replayed_not_repeated(
    env: SyncTenant, standin: StandIn, module_localstripe: LocalStripe
) -> None:
    """Stripe created the customer, but the answer came too late (the client timed out after 3 s). The retry
    sends the same Idempotency-Key and body, so Stripe (here the stand-in) replays the first answer."""
    standin.faults({**CREATE, "action": "timeout_after_commit", "seconds": 8})
    customer = env.create()
    stripe_id = env.wait_linked(customer["id"])
    job = only_job(env, customer["id"])
    assert (job["status"], job["attempts"]) == ("succeeded", 2)
    stats = standin.stats()
    assert stats["creates"][customer["id"]] == 1 and stats["replays"] == 1
    assert [c.id for c in stripe_customers_for(stripe_sdk(module_localstripe.base_url), customer["id"])] == [stripe_id]


def test_a_burst_of_updates_coalesces_into_the_latest_state(
    env: SyncTenant, standin: StandIn, module_localstripe: LocalStripe
) -> None:
    standin.faults({**CREATE, "action": "delay", "seconds": 3})
    customer = env.create()
    for n in range(1, 6):
        assert env.api.put(f"/v1/customers/{customer['id']}", json={"name": f"Name {n}"}).status_code == 200
    stripe_id = env.wait_linked(customer["id"])
    env.wait_settled(customer["id"])
    assert stripe_sdk(module_localstripe.base_url).v1.customers.retrieve(stripe_id).name == "Name 5"
    updates = standin.stats()["requests"].get("POST /v1/customers/{id}", 0)
    # When the worker claims the create only after the burst, the create itself carries "Name 5": no update call.
    assert updates < 5
    coalesced = [job for job in env.jobs(customer_id=customer["id"]) if "coalesced_into" in job["result"]]
    assert len(coalesced) == 5 - updates
    wait_for(lambda: all(job["status"] == "succeeded" for job in env.jobs(customer_id=customer["id"])))
