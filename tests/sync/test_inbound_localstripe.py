"""End to end, Stripe -> flexsync: localstripe delivers real signed webhooks to a running `flexsync serve` while
customers are created, updated and deleted with the official SDK; on SQLite and PostgreSQL.

localstripe delivers about a second after each change, in no fixed order, and to every registered webhook:
each test registers its own tenant's URL, looks only at its own Stripe customers, and unregisters after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import stripe

from flexsync.ids import new_id
from tests.support import DatabaseUnderTest, LocalStripe, Server, running_server, wait_for
from tests.sync_support import start_worker
from tests.webhook_support import STRIPE_KEY, WEBHOOK_SECRET, InboundTenant, inbound_tenant


@pytest.fixture
def stripe_api(localstripe_server: LocalStripe) -> stripe.StripeClient:
    return stripe.StripeClient(STRIPE_KEY, base_addresses={"api": localstripe_server.base_url})


Subscribe = Callable[..., AbstractContextManager[InboundTenant]]


@pytest.fixture(scope="module")
def own_server(
    module_db: DatabaseUnderTest, localstripe_server: LocalStripe, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """`flexsync serve --no-worker` on the module's own database: the `flexsync worker` of some tests pushes every
    tenant's queued customers to localstripe, which sends their webhooks to every subscribed tenant; another
    module's tenants there would come back here as customers."""
    with running_server(
        module_db,
        tmp_path_factory.mktemp("inbound-logs"),
        "--no-worker",
        FLEXSYNC_STRIPE_API_BASE=localstripe_server.base_url,
    ) as running:
        yield running


@pytest.fixture
def subscribed(
    module_db: DatabaseUnderTest, own_server: Server, localstripe_server: LocalStripe
) -> Iterator[Subscribe]:
    """`with subscribed(settings) as inbound:` a new tenant of the running server, whose webhook URL localstripe
    delivers to for the test; the URL is unregistered (no events) after."""
    webhook_id = new_id("we")

    @contextmanager
    def subscribe(settings: dict[str, Any] | None = None) -> Iterator[InboundTenant]:
        with inbound_tenant(module_db, own_server.base_url, settings) as inbound:
            localstripe_server.register_webhook(webhook_id, inbound.webhook_url, WEBHOOK_SECRET)
            yield inbound

    yield subscribe
    localstripe_server.register_webhook(webhook_id, "http://127.0.0.1:9/unused", WEBHOOK_SECRET, events=["none"])


@pytest.fixture
def stripe_worker(module_db: DatabaseUnderTest, localstripe_server: LocalStripe, tmp_path: Path) -> Iterator[None]:
    """A real `flexsync worker` pushing to localstripe, for the tests that need flexsync -> Stripe too."""
    worker = start_worker(module_db, tmp_path, FLEXSYNC_STRIPE_API_BASE=localstripe_server.base_url)
    yield
    worker.stop()


def wait_customer(inbound: InboundTenant, stripe_id: str, check: Any = bool, what: str = "") -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        matches = inbound.customers_for(stripe_id)
        assert len(matches) <= 1, matches
        return matches[0] if matches and check(matches[0]) else None

    return wait_for(found, timeout=30, what=what or f"the customer for {stripe_id}")


def test_stripe_customers_created_updated_and_deleted_flow_into_flexsync(
    subscribed: Subscribe, stripe_api: stripe.StripeClient
) -> None:
    with subscribed() as inbound:
        created = stripe_api.v1.customers.create(
            {
                "name": "Grace Hopper",
                "email": "grace@example.com",
                "address": {"line1": "1 Navy Yard", "city": "Arlington", "state": "VA", "country": "US"},
                "metadata": {"team": "compilers"},
            }
        )
        customer = wait_customer(inbound, created.id)
        assert (customer["name"], customer["email"]) == ("Grace Hopper", "grace@example.com")
        assert (customer["address_line1"], customer["address_city"]) == ("1 Navy Yard", "Arlington")
        assert (customer["address_state"], customer["address_country"]) == ("VA", "US")
        assert customer["external_id"] == created.id and customer["created_by"] == "stripe"
        assert customer["metadata"] == {"stripe_customer_id": created.id}

        stripe_api.v1.customers.update(
            created.id, {"name": "Rear Admiral Hopper", "address": {"line1": "2 Pentagon", "city": "Arlington"}}
        )
        updated = wait_customer(inbound, created.id, lambda c: c["name"] == "Rear Admiral Hopper", "the update")
        assert updated["id"] == customer["id"] and updated["address_line1"] == "2 Pentagon"

        stripe_api.v1.customers.delete(created.id)
        wait_for(
            lambda: inbound.sync_status(customer["id"])["link_status"] == "deleted_in_stripe",
            timeout=30,
            what="the deletion",
        )
        assert inbound.api.get(f"/v1/customers/{customer['id']}").json()["status"] == "published"

        events = [e for e in inbound.events() if e["stripe_object_id"] == created.id]
        assert sorted(e["type"] for e in events) == ["customer.created", "customer.deleted", "customer.updated"]
        assert all(e["status"] == "applied" for e in events)
        assert len(inbound.customers_for(created.id)) == 1


def test_a_stripe_deletion_archives_when_configured(subscribed: Subscribe, stripe_api: stripe.StripeClient) -> None:
    with subscribed({"on_stripe_delete": "archive"}) as inbound:
        created = stripe_api.v1.customers.create({"email": "nameless@example.com"})
        customer = wait_customer(inbound, created.id)
        assert customer["name"] == "nameless@example.com"

        stripe_api.v1.customers.delete(created.id)
        archived = wait_customer(inbound, created.id, lambda c: c["status"] == "archived", "the archive")
        assert archived["id"] == customer["id"] and archived["updated_by"] == "stripe"


def test_flexsyncs_own_pushes_come_back_as_links_not_duplicates_and_echo_nothing(
    subscribed: Subscribe, stripe_api: stripe.StripeClient, stripe_worker: None
) -> None:
    """The full loop: a customer made in flexsync is pushed to Stripe by a real `flexsync worker`; Stripe's
    customer.created for it links (or finds linked) that customer instead of importing a second one, and the
    customer.updated that follows an update in flexsync changes nothing and pushes nothing back."""
    with subscribed() as inbound:
        created = inbound.api.post("/v1/customers", json={"external_id": "crm-77", "name": "Katherine"})
        assert created.status_code == 201, created.text
        customer_id = created.json()["id"]

        def linked_by_webhook() -> str | None:
            stripe_id: str | None = (
                inbound.api.get(f"/v1/customers/{customer_id}").json()["metadata"].get("stripe_customer_id")
            )
            events = [e for e in inbound.events() if stripe_id and e["stripe_object_id"] == stripe_id]
            return stripe_id if any(e["status"] == "applied" for e in events) else None

        stripe_id = wait_for(linked_by_webhook, timeout=30, what="the pushed customer's webhook")
        assert [c["id"] for c in inbound.customers()] == [customer_id]
        echoed = inbound.customers()[0]
        assert echoed["name"] == "Katherine" and echoed["created_by"] != "stripe"

        updated = inbound.api.put(f"/v1/customers/{customer_id}", json={"name": "Katherine Johnson"})
        assert updated.status_code == 200, updated.text

        def update_echoed() -> dict[str, Any] | None:
            events = [e for e in inbound.events(type="customer.updated") if e["stripe_object_id"] == stripe_id]
            return events[0] if events and events[0]["status"] == "applied" else None

        echo = wait_for(update_echoed, timeout=30, what="the pushed update's webhook")
        assert echo["note"] and "last pushed" in echo["note"]
        assert stripe_api.v1.customers.retrieve(stripe_id).name == "Katherine Johnson"
        after = inbound.api.get(f"/v1/customers/{customer_id}").json()
        assert after["name"] == "Katherine Johnson" and after["updated_by"] != "stripe"
        jobs = inbound.api.get("/v1/sync-jobs", params={"limit": 100}).json()["items"]
        assert sorted(job["kind"] for job in jobs) == ["create", "update"]  # none caused by the webhooks


def test_sync_to_stripe_after_a_deletion_in_stripe_makes_a_new_stripe_customer_and_relinks(
    subscribed: Subscribe, stripe_api: stripe.StripeClient, stripe_worker: None
) -> None:
    """A Stripe customer deleted in Stripe leaves its customer linked to nothing (on_stripe_delete: ignore);
    an explicit sync then creates a new Stripe customer, and the new link takes the old one's place."""
    with subscribed() as inbound:
        first = stripe_api.v1.customers.create({"name": "Dorothy Vaughan", "email": "dorothy@example.com"})
        customer_id = wait_customer(inbound, first.id)["id"]
        stripe_api.v1.customers.delete(first.id)
        wait_for(
            lambda: inbound.sync_status(customer_id)["link_status"] == "deleted_in_stripe",
            timeout=30,
            what="the deletion",
        )

        queued = inbound.api.post(f"/v1/customers/{customer_id}/sync-to-stripe")
        assert queued.status_code == 202, queued.text

        def relinked() -> dict[str, Any] | None:
            status = inbound.sync_status(customer_id)
            fresh = status["link_status"] == "linked" and status["stripe_customer_id"] != first.id
            return status if fresh else None

        status = wait_for(relinked, timeout=30, what="the new Stripe customer's link")
        second = stripe_api.v1.customers.retrieve(status["stripe_customer_id"])
        assert second.name == "Dorothy Vaughan"
        assert second.metadata.to_dict()["flexprice_customer_id"] == customer_id
        assert inbound.api.get(f"/v1/customers/{customer_id}").json()["metadata"] == {"stripe_customer_id": second.id}
        job = inbound.api.get(f"/v1/sync-jobs/{queued.json()['job_id']}").json()
        assert (job["kind"], job["status"], job["result"]["action"]) == ("create", "succeeded", "created")
        # The new Stripe customer's own customer.created comes back and finds it linked: still one customer.
        wait_for(
            lambda: any(
                e["stripe_object_id"] == second.id and e["status"] == "applied"
                for e in inbound.events(type="customer.created")
            ),
            timeout=30,
            what="the new Stripe customer's webhook",
        )
        assert [c["id"] for c in inbound.customers()] == [customer_id]
