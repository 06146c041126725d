"""FlexPrice's integration mappings (`/v1/integrations`) against a running `flexsync serve` (with its worker) and
localstripe, on SQLite and PostgreSQL: a customer linked through the API is linked exactly as the sync links,
so changes flow both ways afterwards and the dashboard shows the link.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import stripe

from flexsync.ids import new_id
from tests.support import DatabaseUnderTest, LocalStripe, Server, assert_error, new_tenant, start_server, wait_for
from tests.webhook_support import STRIPE_KEY, WEBHOOK_SECRET, InboundTenant, inbound_tenant

MAPPING_KEYS = {
    "id", "entity_id", "entity_type", "provider_type", "provider_entity_id", "environment_id", "tenant_id",
    "status", "metadata", "created_at", "updated_at", "created_by", "updated_by",
}  # fmt: skip


@pytest.fixture(scope="module")
def link_server(
    module_db: DatabaseUnderTest, localstripe_server: LocalStripe, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    running = start_server(
        module_db, tmp_path_factory.mktemp("integrations-logs"), FLEXSYNC_STRIPE_API_BASE=localstripe_server.base_url
    )
    yield running
    running.stop()


@pytest.fixture
def stripe_api(localstripe_server: LocalStripe) -> stripe.StripeClient:
    return stripe.StripeClient(STRIPE_KEY, base_addresses={"api": localstripe_server.base_url})


@pytest.fixture
def env(module_db: DatabaseUnderTest, link_server: Server) -> Iterator[InboundTenant]:
    # Neither a Stripe customer made by a test nor one of ours is linked by the sync before the test links them:
    # no import from Stripe, no automatic creation in Stripe (changes to linked customers are still pushed).
    settings = {"inbound_enabled": False, "outbound_enabled": False}
    with inbound_tenant(module_db, link_server.base_url, settings) as tenant:
        yield tenant


def customer(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = api.post("/v1/customers", json={"external_id": new_id("ext"), "name": "Ada Lovelace", **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def link(api: httpx.Client, customer_id: str, stripe_id: str, **extra: Any) -> httpx.Response:
    body = {
        "entity_id": customer_id,
        "entity_type": "customer",
        "provider_type": "stripe",
        "provider_entity_id": stripe_id,
    }
    return api.post("/v1/integrations/link", json={**body, **extra})


def delink(api: httpx.Client, customer_id: str) -> httpx.Response:
    body = {"entity_id": customer_id, "entity_type": "customer", "provider_type": "stripe"}
    return api.request("DELETE", "/v1/integrations/link", json=body)


def mappings(api: httpx.Client, customer_id: str) -> list[dict[str, Any]]:
    response = api.get("/v1/integrations/mappings", params={"entity_type": "customer", "entity_id": customer_id})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_link_list_and_delink(env: InboundTenant, stripe_api: stripe.StripeClient) -> None:
    remote = stripe_api.v1.customers.create({"name": "Stripe's Ada", "email": "ada@stripe.example"})
    ours = customer(env.api, email="ada@example.com")

    response = link(env.api, ours["id"], remote.id, metadata={"source": "crm"})
    assert response.status_code == 200, response.text
    mapping = response.json()["mapping"]
    assert set(mapping) == MAPPING_KEYS
    assert (mapping["entity_id"], mapping["entity_type"]) == (ours["id"], "customer")
    assert (mapping["provider_type"], mapping["provider_entity_id"]) == ("stripe", remote.id)
    assert (mapping["tenant_id"], mapping["environment_id"]) == (env.tenant.tenant_id, env.tenant.environment_id)
    assert mapping["status"] == "published" and mapping["metadata"] == {"source": "crm"}
    assert mapping["created_by"].startswith("key_")

    # The sync's own link: the customer shows it, Stripe's customer names ours and keeps its own data.
    assert env.api.get(f"/v1/customers/{ours['id']}").json()["metadata"] == {"stripe_customer_id": remote.id}
    assert env.sync_status(ours["id"])["link_status"] == "linked"
    stamped = stripe_api.v1.customers.retrieve(remote.id)
    assert stamped.metadata.to_dict() == {"flexprice_customer_id": ours["id"]}
    assert (stamped.name, stamped.email) == ("Stripe's Ada", "ada@stripe.example")

    assert mappings(env.api, ours["id"]) == [mapping]
    expanded = env.api.get(f"/v1/customers/{ours['id']}", params={"expand": "integrations"}).json()
    assert expanded["integrations"] == [mapping]
    found = env.api.post("/v1/customers/search", json={"customer_ids": [ours["id"]], "expand": "integrations"})
    assert found.json()["items"][0]["integrations"] == [mapping]
    assert "integrations" not in env.api.get(f"/v1/customers/{ours['id']}").json()

    # Linking what is linked already answers the same mapping.
    again = link(env.api, ours["id"], remote.id)
    assert again.status_code == 200 and again.json()["mapping"]["id"] == mapping["id"]

    response = delink(env.api, ours["id"])
    assert response.status_code == 200, response.text
    assert response.json() == {"message": "integration mapping delinked"}
    assert mappings(env.api, ours["id"]) == []
    assert env.api.get(f"/v1/customers/{ours['id']}").json()["metadata"] == {}
    assert env.sync_status(ours["id"])["link_status"] == "not_linked"
    kept = stripe_api.v1.customers.retrieve(remote.id)
    assert (kept.name, kept.email, getattr(kept, "deleted", False)) == ("Stripe's Ada", "ada@stripe.example", False)
    assert_error(delink(env.api, ours["id"]), 404, "not_found")

    # Unlinked, it may be linked again.
    assert link(env.api, ours["id"], remote.id).status_code == 200


def test_a_second_link_on_either_side_is_refused(env: InboundTenant, stripe_api: stripe.StripeClient) -> None:
    first, second = (stripe_api.v1.customers.create({"name": n}) for n in ("First", "Second"))
    ours, other = customer(env.api), customer(env.api)
    assert link(env.api, ours["id"], first.id).status_code == 200

    taken_customer = assert_error(link(env.api, ours["id"], second.id), 409, "already_exists")
    assert f"customer {ours['id']} is already linked to Stripe customer {first.id}" in taken_customer["message"]
    taken_stripe = assert_error(link(env.api, other["id"], first.id), 409, "already_exists")
    assert f"Stripe customer {first.id} is already linked to customer {ours['id']}" in taken_stripe["message"]
    # Nothing changed by the refusals, in flexsync or in Stripe.
    assert [m["provider_entity_id"] for m in mappings(env.api, ours["id"])] == [first.id]
    assert mappings(env.api, other["id"]) == []
    assert stripe_api.v1.customers.retrieve(second.id).metadata.to_dict() == {}


def test_link_errors_say_what_is_wrong(
    env: InboundTenant, module_db: DatabaseUnderTest, link_server: Server, stripe_api: stripe.StripeClient
) -> None:
    ours = customer(env.api)
    missing = assert_error(link(env.api, ours["id"], "cus_doesnotexist"), 400, "validation_error")
    assert "Stripe customer cus_doesnotexist does not exist" in missing["message"]
    assert missing["details"]["fields"] == {"provider_entity_id": "no such Stripe customer"}
    assert mappings(env.api, ours["id"]) == []

    assert_error(link(env.api, "cust_nobody", "cus_abc"), 404, "not_found")
    plan = assert_error(link(env.api, ours["id"], "cus_abc", entity_type="plan"), 400, "validation_error")
    assert "customers only" in plan["message"]
    razorpay = assert_error(link(env.api, ours["id"], "cus_abc", provider_type="razorpay"), 400, "validation_error")
    assert "Stripe mappings only" in razorpay["message"]
    assert_error(link(env.api, ours["id"], "not-a-stripe-id"), 400, "validation_error")
    assert_error(link(env.api, ours["id"], "cus_abc", colour="blue"), 400, "validation_error")
    unknown_type = env.api.get("/v1/integrations/mappings", params={"entity_type": "spaceship", "entity_id": "x"})
    assert_error(unknown_type, 400, "validation_error")
    assert_error(env.api.get("/v1/integrations/mappings", params={"entity_type": "customer"}), 400, "validation_error")
    plans = env.api.get("/v1/integrations/mappings", params={"entity_type": "plan", "entity_id": "plan_1"})
    assert plans.json() == {"items": [], "pagination": {"total": 0, "limit": 50, "offset": 0}}

    archived = customer(env.api)
    env.api.delete(f"/v1/customers/{archived['id']}")
    assert "archived" in assert_error(link(env.api, archived["id"], "cus_abc"), 400, "validation_error")["message"]

    # Without a Stripe connection there is nothing to link through.
    lone = new_tenant(module_db, link_server.base_url)
    with lone.client() as api:
        solo = customer(api)
        refused = assert_error(link(api, solo["id"], "cus_abc"), 400, "validation_error")
        assert "no active Stripe connection" in refused["message"]
        # Another tenant's customer is not found.
        assert_error(link(api, ours["id"], "cus_abc"), 404, "not_found")


def test_integration_entity_mapping_takes_flexprices_shape(env: InboundTenant, stripe_api: stripe.StripeClient) -> None:
    remote = stripe_api.v1.customers.create({"name": "Existing"})
    mapping = {
        "provider_type": "stripe",
        "provider_entity_id": remote.id,
        "entity_id": "ignored",
        "entity_type": "customer",
    }
    ours = customer(env.api, integration_entity_mapping=[mapping])
    wait_for(lambda: mappings(env.api, ours["id"]) or None, 20, "the link job")
    assert [m["provider_entity_id"] for m in mappings(env.api, ours["id"])] == [remote.id]
    assert stripe_api.v1.customers.retrieve(remote.id).metadata.to_dict() == {"flexprice_customer_id": ours["id"]}

    for bad, problem in [
        ({"provider_type": "stripe"}, "provider_entity_id"),
        ({"provider": "stripe", "provider_entity_id": remote.id}, "either"),
        ({"provider_type": "paypal", "provider_entity_id": remote.id}, "Stripe customers only"),
        ({"provider_type": "stripe", "provider_entity_id": remote.id, "entity_type": "plan"}, "entity_type"),
    ]:
        body = {"external_id": new_id("ext"), "name": "Bad", "integration_entity_mapping": [bad]}
        error = assert_error(env.api.post("/v1/customers", json=body), 400, "validation_error")
        assert problem in error["message"], error


def test_a_customer_linked_through_the_api_syncs_both_ways(
    env: InboundTenant,
    stripe_api: stripe.StripeClient,
    localstripe_server: LocalStripe,
    link_server: Server,
) -> None:
    remote = stripe_api.v1.customers.create({"name": "Before", "email": "before@example.com"})
    ours = customer(env.api, name="Ours", email="ours@example.com")
    assert link(env.api, ours["id"], remote.id).status_code == 200

    # flexsync -> Stripe: the worker pushes a change, as for any linked customer.
    env.api.put(f"/v1/customers/{ours['id']}", json={"name": "Renamed in flexsync", "address_country": "DE"})
    wait_for(lambda: stripe_api.v1.customers.retrieve(remote.id).name == "Renamed in flexsync", 30, "the push")
    pushed = stripe_api.v1.customers.retrieve(remote.id)
    assert pushed.email == "ours@example.com" and pushed.address is not None and pushed.address.country == "DE"
    assert pushed.metadata.to_dict()["flexprice_customer_id"] == ours["id"]

    # Stripe -> flexsync: with inbound on, Stripe's webhook events are applied to the linked customer.
    connection = env.api.put(f"/v1/connections/{env.connection_id}", json={"settings": {"inbound_enabled": True}})
    assert connection.status_code == 200, connection.text
    webhook_id = new_id("we")
    localstripe_server.register_webhook(webhook_id, env.webhook_url, WEBHOOK_SECRET)
    try:
        stripe_api.v1.customers.update(remote.id, {"name": "Renamed in Stripe"})
        wait_for(
            lambda: env.api.get(f"/v1/customers/{ours['id']}").json()["name"] == "Renamed in Stripe",
            30,
            "the webhook event",
        )
    finally:
        localstripe_server.register_webhook(webhook_id, "http://127.0.0.1:9/unused", WEBHOOK_SECRET, events=["none"])
    assert len(env.customers_for(remote.id)) == 1

    # The dashboard shows the link on the customer's page.
    with httpx.Client(base_url=link_server.base_url) as browser:
        token = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/signin").text)
        assert token is not None
        signed = browser.post("/signin", data={"api_key": env.tenant.api_key, "csrf_token": token.group(1)})
        assert signed.status_code == 303
        page = browser.get(f"/customers/{ours['id']}").text
    assert f"<code>{remote.id}</code>" in page
