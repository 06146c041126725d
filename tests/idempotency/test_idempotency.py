"""Idempotent writes over real HTTP, on SQLite and PostgreSQL: a request sent again with its `Idempotency-Key`
is answered what it was answered the first time and changes nothing; another request under the key is refused;
keys belong to one environment; a record is forgotten after 24 hours and pruned by the workers."""

from __future__ import annotations

import re
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.ids import new_id
from flexsync.models import Customer, IdempotencyKey
from tests.support import DatabaseUnderTest, Server, TenantContext, assert_error, new_tenant, start_server, wait_for
from tests.sync_support import add_connection, start_worker
from tests.webhook_support import inbound_tenant, stripe_customer, stripe_event


def customer_body(**fields: Any) -> dict[str, Any]:
    return {"external_id": new_id("crm"), "name": "Ada Lovelace", **fields}


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


def count_customers(db: DatabaseUnderTest, tenant: TenantContext, external_id: str) -> int:
    async def work(session: AsyncSession) -> int:
        query = select(func.count()).where(
            Customer.environment_id == tenant.environment_id, Customer.external_id == external_id
        )
        return int((await session.execute(query)).scalar_one())

    return db.run(work)


def count_records(db: DatabaseUnderTest, environment_id: str | None = None) -> int:
    async def work(session: AsyncSession) -> int:
        query = select(func.count()).select_from(IdempotencyKey)
        if environment_id is not None:
            query = query.where(IdempotencyKey.environment_id == environment_id)
        return int((await session.execute(query)).scalar_one())

    return db.run(work)


def test_the_same_request_twice_makes_one_customer_and_answers_the_same(
    database: DatabaseUnderTest, api: httpx.Client, tenant: TenantContext
) -> None:
    body = customer_body(email="ada@example.com", metadata={"plan": "pro"})

    first = api.post("/v1/customers", json=body, headers=keyed("create-ada-1"))
    second = api.post("/v1/customers", json=body, headers=keyed("create-ada-1"))

    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    assert second.status_code == 201, second.text
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    assert second.headers["content-type"] == first.headers["content-type"]
    assert count_customers(database, tenant, body["external_id"]) == 1
    # Without a key, the same request is a new request: the external_id is taken.
    assert_error(api.post("/v1/customers", json=body), 409, "already_exists")


def test_another_request_under_a_used_key_is_refused(
    database: DatabaseUnderTest, api: httpx.Client, tenant: TenantContext
) -> None:
    body = customer_body()
    assert api.post("/v1/customers", json=body, headers=keyed("create-2")).status_code == 201

    other_body = api.post("/v1/customers", json=customer_body(), headers=keyed("create-2"))
    other_path = api.put(
        f"/v1/customers?external_customer_id={body['external_id']}", json={}, headers=keyed("create-2")
    )

    error = assert_error(other_body, 400, "idempotency_error")
    assert "Idempotency-Key" in error["message"]
    assert "idempotent-replayed" not in other_body.headers
    assert_error(other_path, 400, "idempotency_error")
    assert api.get(f"/v1/customers/external/{body['external_id']}").json()["name"] == "Ada Lovelace"


def test_the_query_string_is_part_of_the_request(api: httpx.Client) -> None:
    one, two = customer_body(), customer_body()
    for body in (one, two):
        assert api.post("/v1/customers", json=body).status_code == 201

    renamed = api.put(
        f"/v1/customers?external_customer_id={one['external_id']}", json={"name": "Ada"}, headers=keyed("rename")
    )
    elsewhere = api.put(
        f"/v1/customers?external_customer_id={two['external_id']}", json={"name": "Ada"}, headers=keyed("rename")
    )

    assert renamed.status_code == 200, renamed.text
    assert_error(elsewhere, 400, "idempotency_error")
    assert api.get(f"/v1/customers/external/{two['external_id']}").json()["name"] == "Ada Lovelace"


def test_every_write_replays_its_answer(api: httpx.Client) -> None:
    created = api.post("/v1/customers", json=customer_body()).json()
    path = f"/v1/customers/{created['id']}"

    updated = api.put(path, json={"name": "Augusta"}, headers=keyed("update"))
    api.put(path, json={"name": "Someone else"})
    again = api.put(path, json={"name": "Augusta"}, headers=keyed("update"))
    assert again.headers["idempotent-replayed"] == "true" and again.content == updated.content
    assert api.get(path).json()["name"] == "Someone else"  # the replay changed nothing

    deleted = api.delete(path, headers=keyed("delete"))
    deleted_again = api.delete(path, headers=keyed("delete"))
    assert (deleted.status_code, deleted_again.status_code) == (204, 204)
    assert deleted_again.headers["idempotent-replayed"] == "true"


def test_a_retry_meeting_its_first_attempts_work_is_answered_as_the_first(api: httpx.Client) -> None:
    """Handlers that check before they write (the environment's connection exists; the connection to delete is
    gone) would refuse a retry whose first attempt did the work: the key's record answers instead."""
    body = {"name": "Stripe", "provider": "stripe", "secret_key": "sk_test_retried", "publishable_key": "pk_test_r"}
    created = api.post("/v1/connections", json=body, headers=keyed("connect"))
    assert created.status_code == 201, created.text
    again = api.post("/v1/connections", json=body, headers=keyed("connect"))
    assert (again.status_code, again.headers.get("idempotent-replayed")) == (201, "true")
    assert again.content == created.content
    # Without the key it is a second connection for the environment.
    assert_error(api.post("/v1/connections", json=body), 409, "already_exists")

    path = f"/v1/connections/{created.json()['id']}"
    deleted = [api.delete(path, headers=keyed("disconnect")) for _ in range(2)]
    assert [d.status_code for d in deleted] == [204, 204]
    assert deleted[1].headers["idempotent-replayed"] == "true"
    assert_error(api.delete(path, headers=keyed("disconnect-again")), 404, "not_found")


def test_a_key_too_long_is_refused(api: httpx.Client) -> None:
    body = customer_body()
    error = assert_error(api.post("/v1/customers", json=body, headers=keyed("k" * 256)), 400, "validation_error")
    assert "Idempotency-Key" in error["details"]["fields"]
    assert api.get(f"/v1/customers/external/{body['external_id']}").status_code == 404
    assert api.post("/v1/customers", json=body, headers=keyed("k" * 255)).status_code == 201


def test_keys_belong_to_one_environment(database: DatabaseUnderTest, server: Server, api: httpx.Client) -> None:
    other = new_tenant(database, server.base_url)
    body = customer_body()

    mine = api.post("/v1/customers", json=body, headers=keyed("shared-key"))
    with other.client() as other_api:
        theirs = other_api.post("/v1/customers", json=body, headers=keyed("shared-key"))

    assert mine.status_code == theirs.status_code == 201, theirs.text
    assert "idempotent-replayed" not in theirs.headers
    assert theirs.json()["id"] != mine.json()["id"]
    assert theirs.json()["environment_id"] == other.environment_id


def test_a_request_without_a_key_stores_nothing(
    database: DatabaseUnderTest, api: httpx.Client, tenant: TenantContext
) -> None:
    assert api.post("/v1/customers", json=customer_body()).status_code == 201
    assert count_records(database, tenant.environment_id) == 0


def test_a_failed_request_is_not_remembered(api: httpx.Client) -> None:
    """Only a write that was made is recorded: a request refused (here: a bad email) changed nothing, and sent
    again, fixed, under the same key, it is made."""
    body = customer_body(email="not-an-email")
    assert_error(api.post("/v1/customers", json=body, headers=keyed("fix-me")), 400, "validation_error")
    existing = api.post("/v1/customers", json=customer_body()).json()
    taken = {**customer_body(), "external_id": existing["external_id"]}
    assert_error(api.post("/v1/customers", json=taken, headers=keyed("fix-me-2")), 409, "already_exists")
    fixed = api.post("/v1/customers", json=taken | {"external_id": new_id("crm")}, headers=keyed("fix-me-2"))
    assert fixed.status_code == 201, fixed.text


def test_concurrent_requests_with_one_key_make_one_customer(database: DatabaseUnderTest, tenant: TenantContext) -> None:
    body = customer_body()
    answers: list[httpx.Response] = []
    clients = 8
    ready = threading.Barrier(clients)

    def send() -> None:
        with tenant.client() as client:
            ready.wait()
            answers.append(client.post("/v1/customers", json=body, headers=keyed("race")))

    threads = [threading.Thread(target=send) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    made = [a for a in answers if a.status_code == 201 and "idempotent-replayed" not in a.headers]
    replayed = [a for a in answers if a.status_code == 201 and a.headers.get("idempotent-replayed") == "true"]
    in_flight = [a for a in answers if a.status_code == 409]
    assert len(made) == 1, [a.text for a in answers]
    assert len(made) + len(replayed) + len(in_flight) == clients, [a.text for a in answers]
    assert all(a.content == made[0].content for a in replayed)
    for answer in in_flight:
        assert_error(answer, 409, "idempotency_error")
    assert count_customers(database, tenant, body["external_id"]) == 1


def test_a_replay_queues_no_second_sync_job(
    database: DatabaseUnderTest, api: httpx.Client, tenant: TenantContext
) -> None:
    add_connection(database, tenant)
    body = customer_body()

    first = api.post("/v1/customers", json=body, headers=keyed("with-job"))
    again = api.post("/v1/customers", json=body, headers=keyed("with-job"))

    assert again.headers["idempotent-replayed"] == "true"
    jobs = api.get("/v1/sync-jobs", params={"customer_id": first.json()["id"]}).json()["items"]
    assert len(jobs) == 1, jobs  # the create's push, once


def age_records(db: DatabaseUnderTest, environment_id: str, hours: float) -> None:
    """Move the environment's records `hours` into the past: the clock, as far as they can tell."""

    async def work(session: AsyncSession) -> None:
        records = select(IdempotencyKey.key, IdempotencyKey.created_at).where(
            IdempotencyKey.environment_id == environment_id
        )
        for key, created_at in (await session.execute(records)).all():
            await session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.environment_id == environment_id, IdempotencyKey.key == key)
                .values(created_at=created_at - timedelta(hours=hours))
            )

    db.run(work)


def test_a_key_is_forgotten_after_24_hours(
    database: DatabaseUnderTest, api: httpx.Client, tenant: TenantContext
) -> None:
    body = customer_body()
    assert api.post("/v1/customers", json=body, headers=keyed("day-old")).status_code == 201
    age_records(database, tenant.environment_id, 23.5)
    assert api.post("/v1/customers", json=body, headers=keyed("day-old")).headers["idempotent-replayed"] == "true"

    age_records(database, tenant.environment_id, 1)

    # The request runs again, as a new one: it meets the customer it made.
    assert_error(api.post("/v1/customers", json=body, headers=keyed("day-old")), 409, "already_exists")
    # A key past its 24 hours can name another request.
    assert api.post("/v1/customers", json=customer_body(), headers=keyed("day-old")).status_code == 201


def test_workers_prune_records_older_than_24_hours(
    fresh_db: DatabaseUnderTest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = start_server(fresh_db, tmp_path_factory.mktemp("prune-logs"), "--no-worker")
    try:
        tenant = new_tenant(fresh_db, server.base_url)
        with tenant.client() as api:
            for key in ("old-1", "old-2"):
                assert api.post("/v1/customers", json=customer_body(), headers=keyed(key)).status_code == 201
            age_records(fresh_db, tenant.environment_id, 25)
            assert api.post("/v1/customers", json=customer_body(), headers=keyed("new")).status_code == 201
    finally:
        server.stop()
    assert count_records(fresh_db) == 3

    worker = start_worker(fresh_db, tmp_path)
    try:
        wait_for(lambda: count_records(fresh_db) == 1, 30, "the worker to prune the old records")
        wait_for(lambda: "pruned expired idempotency keys" in worker.log(), 10, "the worker to log it")
    finally:
        worker.stop()


def hidden_field(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]+)"', page)
    assert found is not None, f"no {name} field"
    return found.group(1)


def test_a_dashboard_form_sent_twice_makes_one_customer(
    database: DatabaseUnderTest, server: Server, tenant: TenantContext
) -> None:
    with httpx.Client(base_url=server.base_url) as browser:
        sign_in = browser.get("/signin").text
        signed = browser.post(
            "/signin", data={"api_key": tenant.api_key, "csrf_token": hidden_field(sign_in, "csrf_token")}
        )
        assert signed.status_code == 303
        form_page = browser.get("/customers/new").text
        another_form = browser.get("/customers/new").text
        form = {
            "csrf_token": hidden_field(form_page, "csrf_token"),
            "idempotency_key": hidden_field(form_page, "idempotency_key"),
            "external_id": new_id("crm"),
            "name": "Grace Hopper",
        }
        # Each form shown has a key of its own.
        assert hidden_field(another_form, "idempotency_key") != form["idempotency_key"]

        first = browser.post("/customers/new", data=form)
        second = browser.post("/customers/new", data=form)

    assert first.status_code == second.status_code == 303, second.text
    assert first.headers["location"].startswith("/customers/cust_")
    assert second.headers["location"] == first.headers["location"]
    assert count_customers(database, tenant, form["external_id"]) == 1


def test_a_webhook_event_replayed_with_a_key_is_applied_once(database: DatabaseUnderTest, server: Server) -> None:
    """The event replay is several units of work (claim and apply, then record the outcome): with a key they
    are one write, answered with what it did."""
    with inbound_tenant(database, server.base_url) as inbound:
        created = stripe_event("customer.created", stripe_customer(name="Replayed"))
        inbound.deliver_ok(created, "applied")
        stored = inbound.event_for(created["id"])
        path = f"/v1/webhook-events/{stored['id']}/replay"

        first = inbound.api.post(path, headers=keyed("replay-1"))
        again = inbound.api.post(path, headers=keyed("replay-1"))

        assert first.status_code == 200, first.text
        assert (first.json()["status"], first.json()["attempts"]) == ("applied", 2)
        assert again.headers["idempotent-replayed"] == "true" and again.content == first.content
        assert inbound.event_for(created["id"])["attempts"] == 2
        assert len(inbound.customers()) == 1
