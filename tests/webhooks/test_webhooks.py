"""The Stripe webhook endpoint, over real HTTP to `flexsync serve`, with payloads signed as Stripe signs them,
on SQLite and PostgreSQL: what is accepted, what is refused, and that each event is stored exactly once."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support import DatabaseUnderTest, Server, assert_error, new_tenant, wait_for
from tests.webhook_support import (
    WEBHOOK_SECRET,
    InboundTenant,
    add_stripe_connection,
    inbound_tenant,
    replace_webhook_secrets,
    sign,
    stripe_customer,
    stripe_event,
)


@pytest.fixture
def inbound(inbound_db: DatabaseUnderTest, inbound_server: Server) -> Iterator[InboundTenant]:
    with inbound_tenant(inbound_db, inbound_server.base_url) as tenant:
        yield tenant


def assert_nothing_stored(inbound: InboundTenant) -> None:
    assert inbound.events() == []
    assert inbound.customers() == []


def assert_refused(response: httpx.Response, status: int, code: str, *secrets: str) -> dict[str, Any]:
    """The contract's error shape, repeating neither a secret nor the payload."""
    body = assert_error(response, status, code)
    for secret in (WEBHOOK_SECRET, *secrets):
        assert secret not in response.text
    assert "Ada Lovelace" not in response.text
    return body


def test_customer_created_makes_a_linked_customer_from_the_stripe_data(inbound: InboundTenant) -> None:
    address = {
        "line1": "1 Navy Yard",
        "line2": "Suite 5",
        "city": "Arlington",
        "state": "VA",
        "postal_code": "22202",
        "country": "us",
    }
    obj = stripe_customer(name="Grace Hopper", email="grace@example.com", address=address, metadata={"plan": "pro"})
    event = stripe_event("customer.created", obj)

    assert inbound.deliver_ok(event) == {"received": True, "event_id": event["id"], "status": "applied"}

    customer = inbound.customer_for(obj["id"])
    assert (customer["name"], customer["email"]) == ("Grace Hopper", "grace@example.com")
    assert customer["address_line1"] == "1 Navy Yard" and customer["address_line2"] == "Suite 5"
    assert (customer["address_city"], customer["address_state"]) == ("Arlington", "VA")
    assert (customer["address_postal_code"], customer["address_country"]) == ("22202", "US")
    # The Stripe id is the external_id; other Stripe metadata keys are not copied.
    assert customer["external_id"] == obj["id"]
    assert customer["metadata"] == {"stripe_customer_id": obj["id"]}
    assert customer["created_by"] == customer["updated_by"] == "stripe"
    assert customer["status"] == "published"

    stored = inbound.event_for(event["id"])
    assert stored["status"] == "applied" and stored["attempts"] == 1 and stored["last_error"] is None
    assert (stored["type"], stored["stripe_object_id"], stored["customer_id"]) == (
        "customer.created",
        obj["id"],
        customer["id"],
    )
    assert stored["processed_at"] is not None and "payload" not in stored
    detail = inbound.api.get(f"/v1/webhook-events/{stored['id']}").json()
    assert detail["payload"] == event

    sync = inbound.sync_status(customer["id"])
    assert (sync["link_status"], sync["stripe_customer_id"]) == ("linked", obj["id"])
    # Applied from Stripe, so nothing is pushed back to Stripe.
    assert sync["pending_jobs"] == []


def test_a_nameless_stripe_customer_is_named_after_its_email_or_id(inbound: InboundTenant) -> None:
    with_email = stripe_customer(name=None, email="nameless@example.com")
    bare = stripe_customer(name=None, email=None, address=None)
    inbound.deliver_ok(stripe_event("customer.created", with_email), "applied")
    inbound.deliver_ok(stripe_event("customer.created", bare), "applied")
    assert inbound.customer_for(with_email["id"])["name"] == "nameless@example.com"
    assert inbound.customer_for(bare["id"])["name"] == bare["id"]


def test_a_redelivered_event_answers_duplicate_and_changes_nothing(inbound: InboundTenant) -> None:
    obj = stripe_customer()
    created = stripe_event("customer.created", obj, created=int(time.time()) - 10)
    updated = stripe_event("customer.updated", {**obj, "name": "Ada King"}, created=int(time.time()) - 5)
    inbound.deliver_ok(created, "applied")
    inbound.deliver_ok(updated, "applied")

    assert inbound.deliver_ok(created) == {"received": True, "event_id": created["id"], "status": "duplicate"}
    assert inbound.deliver_ok(updated)["status"] == "duplicate"

    assert inbound.customer_for(obj["id"])["name"] == "Ada King"
    assert sorted(e["stripe_event_id"] for e in inbound.events()) == sorted([created["id"], updated["id"]])
    assert all(e["attempts"] == 1 for e in inbound.events())


def test_twenty_concurrent_deliveries_of_one_event_make_one_customer(inbound: InboundTenant) -> None:
    obj = stripe_customer()
    event = stripe_event("customer.created", obj)
    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: inbound.deliver(event), range(20)))

    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert Counter(r.json()["status"] for r in responses) == {"applied": 1, "duplicate": 19}
    assert len(inbound.customers_for(obj["id"])) == 1
    assert [e["stripe_event_id"] for e in inbound.events()] == [event["id"]]


def test_a_stale_timestamp_is_refused_and_nothing_is_stored(inbound: InboundTenant) -> None:
    event = stripe_event("customer.created", stripe_customer())
    response = inbound.deliver(event, timestamp=int(time.time()) - 301)
    body = assert_refused(response, 400, "validation_error")
    assert body["details"] == {"reason": "stale_timestamp"}
    assert_nothing_stored(inbound)


def test_a_bad_or_missing_signature_is_refused_and_nothing_is_stored(inbound: InboundTenant) -> None:
    event = stripe_event("customer.created", stripe_customer())
    payload = json.dumps(event).encode()

    wrong = inbound.deliver(event, secret="whsec_somebodyelse")
    assert assert_refused(wrong, 400, "validation_error", "whsec_somebodyelse")["details"] == {
        "reason": "bad_signature"
    }
    for headers in ({}, {"Stripe-Signature": "t=1,v1=abc"}, {"Stripe-Signature": "nonsense"}):
        response = httpx.post(inbound.webhook_url, content=payload, headers=headers, timeout=10)
        assert_refused(response, 400, "validation_error")
    # A signature over other bytes does not cover this body.
    tampered = httpx.post(
        inbound.webhook_url, content=payload + b" ", headers={"Stripe-Signature": sign(payload)}, timeout=10
    )
    assert_refused(tampered, 400, "validation_error")
    assert_nothing_stored(inbound)


@pytest.mark.parametrize(
    "payload",
    [b"{not json", b'"just a string"', b"[1, 2]", b'{"hello": "world"}', b'{"id": "evt_1"}', b"\xff\xfe{}"],
    ids=["malformed", "string", "array", "no-id", "no-type", "not-utf8"],
)
def test_a_signed_body_that_is_not_a_stripe_event_is_refused(inbound: InboundTenant, payload: bytes) -> None:
    response = httpx.post(
        inbound.webhook_url,
        content=payload,
        headers={"Stripe-Signature": sign(payload) if payload.isascii() else "t=1,v1=00"},
        timeout=10,
    )
    assert_refused(response, 400, "validation_error")
    assert inbound.events() == []


def test_a_body_over_one_mib_is_refused_with_413_and_not_stored(inbound: InboundTenant) -> None:
    event = stripe_event("customer.created", stripe_customer(description="x" * (1024 * 1024)))
    assert_refused(inbound.deliver(event), 413, "payload_too_large")
    assert_nothing_stored(inbound)


def test_both_webhook_secrets_verify_during_a_rotation(inbound_db: DatabaseUnderTest, inbound_server: Server) -> None:
    with inbound_tenant(inbound_db, inbound_server.base_url, secrets=("whsec_newsecret", WEBHOOK_SECRET)) as inbound:
        for secret in ("whsec_newsecret", WEBHOOK_SECRET):
            event = stripe_event("customer.created", stripe_customer())
            response = inbound.deliver(event, secret=secret)
            assert response.status_code == 200 and response.json()["status"] == "applied", response.text
        assert_refused(inbound.deliver(stripe_event("customer.created", stripe_customer()), secret="whsec_other"), 400,
                       "validation_error", "whsec_other", "whsec_newsecret")  # fmt: skip
        assert len(inbound.customers()) == 2


def test_a_just_changed_secret_verifies_at_once_and_the_removed_one_no_longer_does(inbound: InboundTenant) -> None:
    inbound.deliver_ok(
        stripe_event("customer.created", stripe_customer()), "applied"
    )  # the server now knows the secret
    replace_webhook_secrets(inbound.db, inbound.connection_id, ["whsec_rotatedsecret"])

    fresh = inbound.deliver(stripe_event("customer.created", stripe_customer()), secret="whsec_rotatedsecret")
    assert fresh.status_code == 200, fresh.text
    old = inbound.deliver(stripe_event("customer.created", stripe_customer()))
    assert_refused(old, 400, "validation_error", "whsec_rotatedsecret")
    assert len(inbound.customers()) == 2


def test_no_receiving_connection_answers_404(
    inbound_db: DatabaseUnderTest, inbound_server: Server, inbound: InboundTenant
) -> None:
    event = stripe_event("customer.created", stripe_customer())
    tenant, env = inbound.tenant.tenant_id, inbound.tenant.environment_id
    unconnected = new_tenant(inbound_db, inbound_server.base_url)
    secretless = new_tenant(inbound_db, inbound_server.base_url)
    add_stripe_connection(inbound_db, secretless, secrets=())
    disabled = new_tenant(inbound_db, inbound_server.base_url)
    add_stripe_connection(inbound_db, disabled, status="disabled")
    paths = [
        f"/v1/webhooks/stripe/tenant_unknown/{env}",
        f"/v1/webhooks/stripe/{tenant}/env_unknown",
        f"/v1/webhooks/stripe/{unconnected.tenant_id}/{env}",  # another tenant's environment
        f"/v1/webhooks/stripe/{unconnected.tenant_id}/{unconnected.environment_id}",
        f"/v1/webhooks/stripe/{secretless.tenant_id}/{secretless.environment_id}",
        f"/v1/webhooks/stripe/{disabled.tenant_id}/{disabled.environment_id}",
    ]
    for path in paths:
        assert_refused(inbound.deliver(event, path=path), 404, "not_found")
    assert inbound.events() == []


def test_other_event_types_are_stored_and_ignored(inbound: InboundTenant) -> None:
    event = stripe_event("invoice.paid", {"id": "in_1Abc", "object": "invoice", "customer": "cus_1Abc"})
    assert inbound.deliver_ok(event)["status"] == "ignored"
    stored = inbound.event_for(event["id"])
    assert (stored["status"], stored["type"], stored["customer_id"]) == ("ignored", "invoice.paid", None)
    assert "invoice.paid" in stored["note"]
    assert inbound.customers() == []
    assert inbound.deliver_ok(event)["status"] == "duplicate"


def test_with_inbound_sync_off_events_are_stored_and_ignored(
    inbound_db: DatabaseUnderTest, inbound_server: Server
) -> None:
    with inbound_tenant(inbound_db, inbound_server.base_url, {"inbound_enabled": False}) as inbound:
        event = stripe_event("customer.created", stripe_customer())
        assert inbound.deliver_ok(event)["status"] == "ignored"
        stored = inbound.event_for(event["id"])
        assert stored["status"] == "ignored" and "inbound_enabled" in stored["note"]
        assert inbound.customers() == []


def test_stripe_data_that_does_not_fit_is_left_out_and_noted_on_the_event(inbound: InboundTenant) -> None:
    obj = stripe_customer(email="not-an-email", address={"line1": "1 Main St", "country": "GBR"})
    event = stripe_event("customer.created", obj)
    assert inbound.deliver_ok(event)["status"] == "applied"

    customer = inbound.customer_for(obj["id"])
    assert (customer["name"], customer["address_line1"]) == ("Ada Lovelace", "1 Main St")
    assert customer["email"] is None and customer["address_country"] is None
    stored = inbound.event_for(event["id"])
    assert stored["status"] == "applied" and stored["last_error"] is None
    assert "GBR" in stored["note"] and "not-an-email" in stored["note"]


def test_an_update_with_data_that_does_not_fit_keeps_the_customers_own_values(inbound: InboundTenant) -> None:
    created = int(time.time()) - 10
    obj = stripe_customer(name="Ada Lovelace", email="ada@example.com", address={"line1": "1 Main St", "country": "GB"})
    inbound.deliver_ok(stripe_event("customer.created", obj, created=created), "applied")

    changed = dict(obj, name="Ada King", email="ada at example", address={"line1": "2 Main St", "country": "GBR"})
    update = stripe_event("customer.updated", changed, created=created + 5)
    inbound.deliver_ok(update, "applied")

    customer = inbound.customer_for(obj["id"])
    # What fits is copied; the email and country Stripe has now do not fit, so the customer keeps its own.
    assert (customer["name"], customer["address_line1"]) == ("Ada King", "2 Main St")
    assert (customer["email"], customer["address_country"]) == ("ada@example.com", "GB")
    note = inbound.event_for(update["id"])["note"]
    assert "GBR" in note and "ada at example" in note


def test_an_event_for_one_environment_never_touches_another(
    inbound_db: DatabaseUnderTest, inbound_server: Server
) -> None:
    with (
        inbound_tenant(inbound_db, inbound_server.base_url) as first,
        inbound_tenant(inbound_db, inbound_server.base_url, secrets=("whsec_secondenvironment",)) as second,
    ):
        obj = stripe_customer()
        event = stripe_event("customer.created", obj)
        first.deliver_ok(event, "applied")
        assert second.customers() == [] and second.events() == []

        # Signed for the first environment, it does not verify at the second's URL.
        assert_refused(second.deliver(event), 400, "validation_error", "whsec_secondenvironment")
        # The same Stripe event sent to the second environment is its own, linked to its own customer.
        assert second.deliver(event, secret="whsec_secondenvironment").json()["status"] == "applied"
        assert first.customer_for(obj["id"])["id"] != second.customer_for(obj["id"])["id"]
        assert len(first.events()) == len(second.events()) == 1
        assert first.api.get(f"/v1/webhook-events/{second.events()[0]['id']}").status_code == 404


def test_only_post_is_served_on_the_webhook_path(inbound: InboundTenant) -> None:
    response = httpx.get(inbound.webhook_url, timeout=10)
    assert_refused(response, 405, "validation_error")
    assert inbound.events() == []


def test_a_delivery_cut_off_mid_body_stores_nothing_and_is_no_error(
    inbound: InboundTenant, inbound_server: Server
) -> None:
    body = json.dumps(stripe_event("customer.created", stripe_customer()), indent=2).encode()
    head = (
        f"POST {inbound.webhook_path} HTTP/1.1\r\nHost: flexsync\r\nContent-Type: application/json\r\n"
        f"Stripe-Signature: {sign(body)}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    url = httpx.URL(inbound.tenant.base_url)
    log_before = len(inbound_server.log())
    with socket.create_connection((url.host, url.port or 80), timeout=10) as client:
        client.sendall(head + body[: len(body) // 2])
    # The server notices the closed connection while it waits for the rest of the body.
    wait_for(lambda: "client went away" in inbound_server.log()[log_before:], what="the cut-off to be logged")

    assert inbound.events() == []
    log = inbound_server.log()[log_before:]
    assert "unhandled error" not in log and "Traceback" not in log
    # Stripe sends it again, whole: applied as usual.
    inbound.deliver_ok(json.loads(body), expected_status="applied")
