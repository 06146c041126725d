"""Catch-up from Stripe's Events API, on SQLite and PostgreSQL: changes made in Stripe while no webhook reached
flexsync are listed from `GET /v1/events`, stored once and applied once.

Stripe here is localstripe (it keeps every event it fires and lists them oldest first, filtered by `type` and
`created`), with no webhook registered for the test's tenant: nothing is delivered until a test says so. The
fault-injecting stand-in (tests/stripe_standin.py) sits in front of it where localstripe cannot do what is
needed: 429 answers, a request held while the catch-up is killed, counting requests, and scripted event
lists answered newest first, as Stripe lists them (for the ordering rules, which need chosen `created`
seconds). The catch-up runs through `flexsync events catch-up` in this process (Typer's CliRunner), as a
killed subprocess, or through the API and a real `flexsync worker`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from flexsync.cli import app as cli_app
from flexsync.config import get_settings
from flexsync.models import CatchUpState
from tests.support import (
    TEST_ENCRYPTION_KEY,
    DatabaseUnderTest,
    LocalStripe,
    Server,
    server_env,
    start_server,
    wait_for,
)
from tests.sync_support import StandIn, start_worker
from tests.webhook_support import STRIPE_KEY, InboundTenant, inbound_tenant, stripe_customer, stripe_event

EVENT_TYPES = ("customer.created", "customer.updated", "customer.deleted")


@pytest.fixture(scope="module")
def catch_up_server(
    module_db: DatabaseUnderTest, module_localstripe: LocalStripe, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """`flexsync serve --no-worker`: the API and the webhook route; catch-ups run where each test says."""
    running = start_server(
        module_db,
        tmp_path_factory.mktemp("catch-up-logs"),
        "--no-worker",
        FLEXSYNC_STRIPE_API_BASE=module_localstripe.base_url,
    )
    yield running
    running.stop()


@pytest.fixture
def stripe_api(module_localstripe: LocalStripe) -> stripe.StripeClient:
    module_localstripe.wipe()  # the account's events are the test's own
    return stripe.StripeClient(STRIPE_KEY, base_addresses={"api": module_localstripe.base_url})


@pytest.fixture
def inbound(
    module_db: DatabaseUnderTest, catch_up_server: Server, stripe_api: stripe.StripeClient
) -> Iterator[InboundTenant]:
    # Its connection is made before the Stripe changes: a new connection catches up from its creation.
    with inbound_tenant(module_db, catch_up_server.base_url) as tenant:
        yield tenant


@pytest.fixture
def quiet_standin(standin: StandIn) -> Iterator[StandIn]:
    standin.reset()
    yield standin
    standin.script_events(None)
    standin.reset()


def catch_up(
    db: DatabaseUnderTest, connection_id: str, stripe_base: str, *args: str, expect_exit: int = 0
) -> dict[str, Any]:
    """`flexsync events catch-up --connection ID --json`, run in this process; its JSON report."""
    env = {
        "FLEXSYNC_DATABASE_URL": db.url,
        "FLEXSYNC_ENCRYPTION_KEYS": TEST_ENCRYPTION_KEY,
        "FLEXSYNC_STRIPE_API_BASE": stripe_base,
    }
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            cli_app, ["events", "catch-up", "--connection", connection_id, "--json", *args], env=env
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == expect_exit, (result.exit_code, result.output, result.exception)
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def connection(inbound: InboundTenant) -> dict[str, Any]:
    response = inbound.api.get(f"/v1/connections/{inbound.connection_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def stripe_events(stripe_api: stripe.StripeClient) -> list[dict[str, Any]]:
    """Every event the account has (localstripe's list, oldest first)."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = stripe_api.v1.events.list(params)  # type: ignore[arg-type]
        found += [event.to_dict() for event in page.data]
        if not page.has_more:
            return found
        params["starting_after"] = page.data[-1].id


def catch_up_state(db: DatabaseUnderTest, connection_id: str) -> CatchUpState | None:
    async def work(session: AsyncSession) -> CatchUpState | None:
        return await session.get(CatchUpState, connection_id)

    return db.run(work)


def set_cursor(db: DatabaseUnderTest, connection_id: str, cursor: datetime) -> None:
    """Where a catch-up last left off, as if it had run then."""

    async def work(session: AsyncSession) -> None:
        now = datetime.now(UTC)
        state = await session.get(CatchUpState, connection_id)
        if state is None:
            session.add(
                CatchUpState(
                    connection_id=connection_id,
                    cursor=int(cursor.timestamp()),
                    run_counts={},
                    created_at=now,
                    updated_at=now,
                )
            )
        else:
            state.cursor = int(cursor.timestamp())

    db.run(work)


# -- every missed change, applied once ---------------------------------------------------------------------------


def test_changes_made_while_no_webhook_arrived_are_caught_up_once(
    module_db: DatabaseUnderTest,
    module_localstripe: LocalStripe,
    inbound: InboundTenant,
    stripe_api: stripe.StripeClient,
) -> None:
    alan = stripe_api.v1.customers.create({"name": "Alan Turing"})
    (alan_created,) = stripe_events(stripe_api)
    inbound.deliver_ok(alan_created, "applied")  # known to flexsync before its webhook stopped arriving
    ada = stripe_api.v1.customers.create({"name": "Ada Lovelace", "email": "ada@example.com"})
    grace = stripe_api.v1.customers.create({"name": "Grace Hopper", "email": "grace@example.com"})
    stripe_api.v1.customers.update(ada.id, {"name": "Augusta Ada King", "address": {"city": "London"}})
    stripe_api.v1.customers.update(grace.id, {"email": "hopper@example.com"})
    stripe_api.v1.customers.delete(alan.id)
    missed = stripe_events(stripe_api)[1:]
    assert len(missed) == 5
    assert len(inbound.customers()) == 1  # nothing else was delivered

    report = catch_up(module_db, inbound.connection_id, module_localstripe.base_url)

    assert {key: report[key] for key in ("listed", "stored", "duplicates", "applied")} == {
        "listed": 6,
        "stored": 5,
        "duplicates": 1,
        "applied": 5,
    }
    assert report["error"] is None and report["gap"] is False
    assert inbound.customer_for(ada.id)["name"] == "Augusta Ada King"
    assert inbound.customer_for(ada.id)["address_city"] == "London"
    assert inbound.customer_for(grace.id)["email"] == "hopper@example.com"
    alan_customer = inbound.customer_for(alan.id)
    assert inbound.sync_status(alan_customer["id"])["link_status"] == "deleted_in_stripe"
    assert len(inbound.customers()) == 3
    events = inbound.events(source="catch_up")
    assert sorted(e["stripe_event_id"] for e in events) == sorted(e["id"] for e in missed)
    assert {(e["source"], e["status"]) for e in events} == {("catch_up", "applied")}

    # Stripe delivering the same events later (its retries, a re-enabled endpoint): stored already.
    for event in missed:
        inbound.deliver_ok(event, "duplicate")
    # And a catch-up that finds nothing new stores nothing; the overlap before the cursor re-reads them.
    again = catch_up(module_db, inbound.connection_id, module_localstripe.base_url)
    assert (again["listed"], again["stored"], again["duplicates"], again["applied"]) == (6, 0, 6, 0)
    assert len(inbound.events()) == 6 and len(inbound.customers()) == 3
    assert [e["stripe_event_id"] for e in inbound.events(source="webhook")] == [alan_created["id"]]

    shown = connection(inbound)["catch_up"]
    assert shown["last_error"] is None and shown["last_run_at"] is not None
    assert shown["recovered_24h"] == 5
    assert shown["lag_seconds"] < 3600 and shown["gap"] is None
    assert shown["last_run"]["duplicates"] == 6


def test_an_event_delivered_by_webhook_first_is_not_stored_again(
    module_db: DatabaseUnderTest,
    module_localstripe: LocalStripe,
    inbound: InboundTenant,
    stripe_api: stripe.StripeClient,
) -> None:
    created = stripe_api.v1.customers.create({"name": "Katherine Johnson"})
    stripe_api.v1.customers.update(created.id, {"name": "Katherine G. Johnson"})
    first, second = stripe_events(stripe_api)
    inbound.deliver_ok(first, "applied")  # the webhook brought the creation; the update was lost

    report = catch_up(module_db, inbound.connection_id, module_localstripe.base_url)

    assert (report["listed"], report["stored"], report["duplicates"], report["applied"]) == (2, 1, 1, 1)
    assert inbound.customer_for(created.id)["name"] == "Katherine G. Johnson"
    assert inbound.event_for(first["id"])["source"] == "webhook"
    assert inbound.event_for(second["id"])["source"] == "catch_up"


def test_nothing_missed_costs_three_stripe_requests(
    module_db: DatabaseUnderTest, inbound: InboundTenant, stripe_api: stripe.StripeClient, quiet_standin: StandIn
) -> None:
    stripe_api.v1.customers.create({"name": "Dorothy Vaughan"})
    catch_up(module_db, inbound.connection_id, quiet_standin.base_url)
    quiet_standin.reset()

    report = catch_up(module_db, inbound.connection_id, quiet_standin.base_url)

    assert report["stored"] == 0
    assert quiet_standin.stats()["requests"] == {"GET /v1/events": 3}  # one list per customer event type


# -- the ordering rules hold for caught-up events ----------------------------------------------------------------


def test_caught_up_events_listed_newest_first_are_applied_in_stripes_order(
    module_db: DatabaseUnderTest, inbound: InboundTenant, quiet_standin: StandIn
) -> None:
    """Stripe lists newest first; the webhook already applied the newest update. The older events then change
    nothing, whichever order they come in."""
    now = int(time.time())
    obj = stripe_customer(name="First")
    created = stripe_event("customer.created", obj, created=now - 10)
    older = stripe_event("customer.updated", {**obj, "name": "Second", "email": "second@example.com"}, created=now - 5)
    newer = stripe_event("customer.updated", {**obj, "name": "Third", "email": "third@example.com"}, created=now)
    inbound.deliver_ok(newer, "applied")
    quiet_standin.script_events([created, older, newer])

    report = catch_up(module_db, inbound.connection_id, quiet_standin.base_url)

    assert (report["listed"], report["stored"], report["duplicates"]) == (3, 2, 1)
    customer = inbound.customer_for(obj["id"])
    assert (customer["name"], customer["email"]) == ("Third", "third@example.com")
    assert "newer event" in inbound.event_for(created["id"])["note"]
    assert inbound.event_for(older["id"])["source"] == "catch_up"


def test_two_caught_up_updates_in_one_second_end_in_stripes_current_state(
    module_db: DatabaseUnderTest, inbound: InboundTenant, stripe_api: stripe.StripeClient, quiet_standin: StandIn
) -> None:
    """Stripe's `created` has one-second resolution: the order of two updates in one second is taken from
    Stripe itself, the customer re-fetched (from localstripe, through the stand-in)."""
    current = stripe_api.v1.customers.create({"name": "Final Name", "email": "final@example.com"})
    obj = stripe_customer(current.id, name="Initial", email="initial@example.com")
    now = int(time.time())
    created = stripe_event("customer.created", obj, created=now - 5)
    final = stripe_event("customer.updated", {**obj, "name": "Final Name", "email": "final@example.com"}, created=now)
    stale = stripe_event("customer.updated", {**obj, "name": "Stale Name"}, created=now)
    # Listed newest first, the stale update (made last here) comes first: without the rule it would win.
    quiet_standin.script_events([created, final, stale])

    report = catch_up(module_db, inbound.connection_id, quiet_standin.base_url)

    assert (report["listed"], report["stored"], report["applied"]) == (3, 3, 3)
    customer = inbound.customer_for(current.id)
    assert (customer["name"], customer["email"]) == ("Final Name", "final@example.com")
    assert len(inbound.customers_for(current.id)) == 1
    assert quiet_standin.stats()["requests"].get("GET /v1/customers/{id}") == 1


def test_several_pages_of_newest_first_events_are_all_applied(
    module_db: DatabaseUnderTest, inbound: InboundTenant, quiet_standin: StandIn
) -> None:
    now = int(time.time())
    objects = [stripe_customer(name=f"Customer {n}") for n in range(230)]
    events = [stripe_event("customer.created", obj, created=now - 50 + n % 50) for n, obj in enumerate(objects)]
    renamed = [stripe_event("customer.updated", {**obj, "name": "Renamed"}, created=now) for obj in objects[:20]]
    quiet_standin.script_events(events + renamed)

    report = catch_up(module_db, inbound.connection_id, quiet_standin.base_url)

    assert (report["listed"], report["stored"], report["applied"]) == (250, 250, 250)
    assert quiet_standin.stats()["requests"]["GET /v1/events"] == 3 + 2  # created: 3 pages; the others 1 each
    names = sorted(c["name"] for c in inbound.customers())
    assert len(names) == 230 and names.count("Renamed") == 20


# -- faults: 429s, a failing Stripe, a killed catch-up ----------------------------------------------------------


def test_a_429_burst_on_the_events_list_is_backed_off(
    module_db: DatabaseUnderTest, inbound: InboundTenant, stripe_api: stripe.StripeClient, quiet_standin: StandIn
) -> None:
    created = stripe_api.v1.customers.create({"name": "Mary Jackson"})
    too_many = {"action": "status", "status": 429, "method": "GET", "path": "/v1/events", "count": 4}
    quiet_standin.faults({**too_many, "error_type": "rate_limit_error", "message": "Too many requests"})

    report = catch_up(module_db, inbound.connection_id, quiet_standin.base_url)

    assert report["error"] is None and report["stored"] == 1
    assert inbound.customer_for(created.id)["name"] == "Mary Jackson"
    stats = quiet_standin.stats()
    assert stats["injected"] == 4 and stats["requests"]["GET /v1/events"] == 3 + 4


def test_a_refused_list_stops_the_catch_up_and_the_next_resumes(
    module_db: DatabaseUnderTest, inbound: InboundTenant, stripe_api: stripe.StripeClient, quiet_standin: StandIn
) -> None:
    created = stripe_api.v1.customers.create({"name": "Annie Easley"})
    cursor = connection(inbound)["catch_up"]["cursor"]
    forbidden = {"action": "status", "status": 403, "method": "GET", "path": "/v1/events", "count": 3}
    quiet_standin.faults({**forbidden, "error_type": "invalid_request_error", "message": "The key may not read events"})

    failed = catch_up(module_db, inbound.connection_id, quiet_standin.base_url, expect_exit=1)

    assert "403" in failed["error"] and "may not read events" in failed["error"]
    shown = connection(inbound)["catch_up"]
    assert shown["last_error"] == failed["error"] and not shown["running"]
    assert shown["cursor"] == cursor
    assert inbound.customers() == []

    resumed = catch_up(module_db, inbound.connection_id, quiet_standin.base_url)
    assert resumed["error"] is None and resumed["stored"] == 1
    assert inbound.customer_for(created.id)["name"] == "Annie Easley"
    assert connection(inbound)["catch_up"]["last_error"] is None


def test_a_catch_up_killed_midway_resumes_from_its_place(
    module_db: DatabaseUnderTest,
    inbound: InboundTenant,
    stripe_api: stripe.StripeClient,
    quiet_standin: StandIn,
    tmp_path: Path,
) -> None:
    for n in range(150):
        stripe_api.v1.customers.create({"name": f"Customer {n}"})
    # The first page of each type goes through; the second page of creations is held until the kill.
    quiet_standin.faults(
        {"action": "pass", "method": "GET", "path": "/v1/events", "count": 3},
        {"action": "delay", "seconds": 120, "method": "GET", "path": "/v1/events", "count": 1},
    )
    log_path = tmp_path / "catch-up.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "flexsync", "events", "catch-up", "--connection", inbound.connection_id, "--json"],
            env=server_env(module_db, FLEXSYNC_STRIPE_API_BASE=quiet_standin.base_url, FLEXSYNC_JOB_LEASE_SECONDS="2"),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:

        def first_page_written() -> bool:
            state = catch_up_state(module_db, inbound.connection_id)
            return bool(state and state.run_position and state.run_position["customer.created"])

        wait_for(first_page_written, timeout=60, what="the first page to be stored")
        wait_for(lambda: quiet_standin.stats()["requests"].get("GET /v1/events", 0) >= 4, what="the held request")
        process.kill()
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    assert len(inbound.customers()) == 100
    state = catch_up_state(module_db, inbound.connection_id)
    assert state is not None and state.run_position is not None
    assert state.run_position["customer.updated"] == state.run_position["customer.deleted"] == "done"

    # Its lease runs out (2 s, not renewed by the dead process); the next catch-up takes over where it stopped.
    wait_for(
        lambda: catch_up_state(module_db, inbound.connection_id).leased_until < datetime.now(UTC),  # type: ignore[union-attr]
        timeout=30,
        what="the dead catch-up's lease to run out",
    )
    quiet_standin.faults()
    resumed = catch_up(module_db, inbound.connection_id, quiet_standin.base_url)

    assert (resumed["listed"], resumed["stored"], resumed["duplicates"]) == (50, 50, 0)
    assert len(inbound.customers()) == 150
    assert len(inbound.events(source="catch_up")) == 150
    assert catch_up_state(module_db, inbound.connection_id).run_position is None  # type: ignore[union-attr]


def test_a_worker_stopped_mid_catch_up_hands_it_back_and_exits(
    module_db: DatabaseUnderTest,
    inbound: InboundTenant,
    stripe_api: stripe.StripeClient,
    quiet_standin: StandIn,
    tmp_path: Path,
) -> None:
    """SIGTERM while a worker catches up: the run ends after the page set it is storing (or, waiting on Stripe,
    at the end of the worker's grace), its lease is handed back at once (not left to run out) with its place
    kept, and the process exits by itself; the next catch-up finishes the job, every customer once."""
    for n in range(250):
        stripe_api.v1.customers.create({"name": f"Customer {n}"})
    # The first page of each type at once; the next ones slowly, so the stop arrives mid-run.
    quiet_standin.faults(
        {"action": "pass", "method": "GET", "path": "/v1/events", "count": 3},
        {"action": "delay", "seconds": 2, "method": "GET", "path": "/v1/events", "count": 10},
    )
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    requested = inbound.api.post(f"/v1/connections/{inbound.connection_id}/catch-up", json={"since": since})
    assert requested.status_code == 202, requested.text
    worker = start_worker(module_db, tmp_path, FLEXSYNC_STRIPE_API_BASE=quiet_standin.base_url)

    def first_page_written() -> bool:
        state = catch_up_state(module_db, inbound.connection_id)
        return bool(state and state.run_position and state.run_position["customer.created"])

    try:
        wait_for(first_page_written, timeout=60, what="the first page to be stored")
        worker.process.terminate()
        exit_code = worker.process.wait(60)
    finally:
        worker.stop()
    assert exit_code == 0, worker.log()
    state = catch_up_state(module_db, inbound.connection_id)
    assert state is not None and state.leased_by is None and state.leased_until is None
    assert state.run_position is not None and state.run_position["customer.created"] != "done"
    assert len(inbound.customers()) < 250

    quiet_standin.faults()
    catch_up(module_db, inbound.connection_id, quiet_standin.base_url)
    assert len(inbound.customers()) == 250
    assert len(inbound.events(source="catch_up")) == 250


def test_one_catch_up_per_connection_at_a_time(
    module_db: DatabaseUnderTest, inbound: InboundTenant, stripe_api: stripe.StripeClient
) -> None:
    set_cursor(module_db, inbound.connection_id, datetime.now(UTC))

    async def hold(session: AsyncSession) -> None:
        state = await session.get(CatchUpState, inbound.connection_id)
        assert state is not None
        state.leased_by, state.leased_until = "another-process", datetime.now(UTC) + timedelta(minutes=5)

    module_db.run(hold)
    get_settings.cache_clear()
    env = {"FLEXSYNC_DATABASE_URL": module_db.url, "FLEXSYNC_ENCRYPTION_KEYS": TEST_ENCRYPTION_KEY}
    result = CliRunner().invoke(cli_app, ["events", "catch-up", "--connection", inbound.connection_id], env=env)
    get_settings.cache_clear()
    assert result.exit_code == 1
    assert "running in another process" in " ".join(result.output.split())
    assert connection(inbound)["catch_up"]["running"] is True


# -- gaps: a cursor older than the 30 days Stripe keeps ---------------------------------------------------------


def test_a_cursor_older_than_stripes_30_days_is_a_gap(
    module_db: DatabaseUnderTest,
    module_localstripe: LocalStripe,
    inbound: InboundTenant,
    stripe_api: stripe.StripeClient,
    catch_up_server: Server,
) -> None:
    set_cursor(module_db, inbound.connection_id, datetime.now(UTC) - timedelta(days=40))
    stripe_api.v1.customers.create({"name": "Hedy Lamarr"})

    report = catch_up(module_db, inbound.connection_id, module_localstripe.base_url)

    assert report["gap"] is True and report["reconciliation_id"] is None
    assert report["stored"] == 1  # what Stripe still has is caught up all the same
    gap = connection(inbound)["catch_up"]["gap"]
    assert gap is not None and datetime.fromisoformat(gap["since"]) < datetime.now(UTC) - timedelta(days=39)
    metrics = httpx.get(f"{catch_up_server.base_url}/metrics", timeout=10).text
    assert f'flexsync_stripe_catch_up_gap{{connection_id="{inbound.connection_id}"}} 1.0' in metrics
    # The gap stays until the next runs, whose cursor is current again, and until a reconciliation closes it.
    catch_up(module_db, inbound.connection_id, module_localstripe.base_url)
    assert connection(inbound)["catch_up"]["gap"] is not None


def test_a_gap_starts_a_reconciliation_when_the_connection_says_so(
    module_db: DatabaseUnderTest,
    module_localstripe: LocalStripe,
    catch_up_server: Server,
    stripe_api: stripe.StripeClient,
    tmp_path: Path,
) -> None:
    with inbound_tenant(module_db, catch_up_server.base_url, {"on_catch_up_gap": "reconcile"}) as inbound:
        assert connection(inbound)["settings"]["on_catch_up_gap"] == "reconcile"
        set_cursor(module_db, inbound.connection_id, datetime.now(UTC) - timedelta(days=31))

        report = catch_up(module_db, inbound.connection_id, module_localstripe.base_url)

        assert report["gap"] is True and report["reconciliation_id"]
        run = inbound.api.get(f"/v1/reconciliations/{report['reconciliation_id']}").json()
        assert (run["direction"], run["dry_run"]) == ("from-stripe", False)
        worker = start_worker(module_db, tmp_path, FLEXSYNC_STRIPE_API_BASE=module_localstripe.base_url)
        try:
            wait_for(
                lambda: (
                    inbound.api.get(f"/v1/reconciliations/{report['reconciliation_id']}").json()["status"]
                    == "succeeded"
                ),
                timeout=60,
                what="the reconciliation",
            )
        finally:
            worker.stop()
        assert connection(inbound)["catch_up"]["gap"] is None  # closed by the reconciliation


# -- the API and the worker --------------------------------------------------------------------------------------


def test_the_api_asks_a_worker_for_a_catch_up(
    module_db: DatabaseUnderTest,
    module_localstripe: LocalStripe,
    inbound: InboundTenant,
    stripe_api: stripe.StripeClient,
    tmp_path: Path,
) -> None:
    created = stripe_api.v1.customers.create({"name": "Radia Perlman"})
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()

    response = inbound.api.post(f"/v1/connections/{inbound.connection_id}/catch-up", json={"since": since})

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "requested" and body["catch_up"]["requested"] is True
    # Catch-up on a schedule is off here: the worker runs it because it was asked for.
    worker = start_worker(
        module_db,
        tmp_path,
        FLEXSYNC_STRIPE_API_BASE=module_localstripe.base_url,
        FLEXSYNC_STRIPE_CATCHUP_INTERVAL_SECONDS="0",
    )

    def recorded() -> dict[str, Any] | None:
        shown: dict[str, Any] = connection(inbound)["catch_up"]
        return shown if shown["last_run_at"] and not shown["requested"] else None

    try:
        wait_for(lambda: inbound.customers_for(created.id), timeout=30, what="the caught-up customer")
        shown = wait_for(recorded, what="the run to be recorded")
    finally:
        worker.stop()
    assert shown["recovered_24h"] == 1 and shown["last_error"] is None
    assert inbound.event_for(stripe_events(stripe_api)[0]["id"])["source"] == "catch_up"


def test_the_api_refuses_bad_catch_up_requests(inbound: InboundTenant) -> None:
    path = f"/v1/connections/{inbound.connection_id}/catch-up"
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    for body in ({"since": future}, {"since": "yesterday"}, {"until": "2026-01-01T00:00:00Z"}):
        response = inbound.api.post(path, json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["code"] == "validation_error"
    assert inbound.api.post("/v1/connections/conn_unknown/catch-up").status_code == 404
    assert inbound.api.post(path).status_code == 202  # no body: from the cursor
    assert inbound.api.get("/v1/webhook-events", params={"source": "email"}).status_code == 400


def test_a_worker_catches_up_at_start_and_on_its_interval(
    module_db: DatabaseUnderTest,
    module_localstripe: LocalStripe,
    inbound: InboundTenant,
    stripe_api: stripe.StripeClient,
    tmp_path: Path,
) -> None:
    first = stripe_api.v1.customers.create({"name": "Frances Allen"})
    worker = start_worker(
        module_db,
        tmp_path,
        FLEXSYNC_STRIPE_API_BASE=module_localstripe.base_url,
        FLEXSYNC_STRIPE_CATCHUP_INTERVAL_SECONDS="3",
    )
    try:
        wait_for(lambda: inbound.customers_for(first.id), timeout=30, what="the catch-up at start")
        second = stripe_api.v1.customers.create({"name": "Barbara Liskov"})
        wait_for(lambda: inbound.customers_for(second.id), timeout=30, what="the next scheduled catch-up")
    finally:
        worker.stop()
    assert {e["source"] for e in inbound.events()} == {"catch_up"}


# -- the dashboard: Settings > Integrations' health, and a banner on every page while something is wrong ---------


@contextmanager
def dashboard_client(server: Server, inbound: InboundTenant) -> Iterator[httpx.Client]:
    """A plain HTTP client signed in to the dashboard with the tenant's key."""
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/signin").text)
        assert token is not None
        signed = client.post("/signin", data={"api_key": inbound.tenant.api_key, "csrf_token": token.group(1)})
        assert signed.status_code == 303
        yield client


def text_of(html: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def set_state(db: DatabaseUnderTest, connection_id: str, **values: Any) -> None:
    async def work(session: AsyncSession) -> None:
        state = await session.get(CatchUpState, connection_id)
        assert state is not None
        for name, value in values.items():
            setattr(state, name, value)

    db.run(work)


def test_the_dashboard_shows_catch_up_health_and_a_banner_while_something_is_wrong(
    module_db: DatabaseUnderTest,
    module_localstripe: LocalStripe,
    catch_up_server: Server,
    inbound: InboundTenant,
    stripe_api: stripe.StripeClient,
) -> None:
    stripe_api.v1.customers.create({"name": "Evelyn Boyd Granville"})
    catch_up(module_db, inbound.connection_id, module_localstripe.base_url)
    pages = ("/customers", "/webhook-events", "/sync-jobs", "/reconciliation", "/settings/integrations")
    with dashboard_client(catch_up_server, inbound) as client:
        for path in pages:
            assert 'id="delivery-problems"' not in client.get(path).text, path
        health = text_of(client.get("/settings/integrations").text)
        assert "Events recovered by catch-up, last 24 h 1" in health
        assert "Catch-up status ok" in health and "Last catch-up" in health
        assert "Catch-up" in text_of(client.get("/webhook-events", params={"source": "catch_up"}).text)

        set_state(module_db, inbound.connection_id, last_error="Stripe answered 403: The key may not read events")
        for path in pages:
            banner = client.get(path).text
            assert 'id="delivery-problems"' in banner, path
            assert "Catch-up from Stripe's Events API is failing: Stripe answered 403" in text_of(banner)
        assert "failing: Stripe answered 403" in text_of(client.get("/settings/integrations").text)

        set_state(
            module_db,
            inbound.connection_id,
            last_error=None,
            gap_since=int(time.time()) - 40 * 86400,
            gap_detected_at=datetime.now(UTC),
        )
        assert "older than the 30 days of events Stripe keeps" in text_of(client.get("/customers").text)

        page = client.get("/settings/integrations").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token is not None
        asked = client.post(
            f"/settings/integrations/{inbound.connection_id}/catch-up", data={"csrf_token": token.group(1)}
        )
        assert asked.status_code == 303
        assert connection(inbound)["catch_up"]["requested"] is True
