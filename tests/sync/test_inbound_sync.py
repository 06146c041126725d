"""Applying Stripe customer events (Stripe -> flexsync), on SQLite and PostgreSQL, against a real `flexsync serve`.

Events are signed here, as Stripe signs them. Where flexsync must ask Stripe for a customer's current state
(two updates in one second), the customer lives in localstripe, which the server is pointed at.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.connections.settings import effective_settings
from flexsync.models import CustomerLink
from flexsync.sync.inbound import ConnectionView, InboundEvent
from tests.cli_support import Completed, run_flexsync
from tests.support import DatabaseUnderTest, LocalStripe, Server, server_env, start_server, wait_for
from tests.sync_support import StandIn
from tests.webhook_support import STRIPE_KEY, InboundTenant, inbound_tenant, stripe_customer, stripe_event


@pytest.fixture
def inbound(inbound_db: DatabaseUnderTest, inbound_server: Server) -> Iterator[InboundTenant]:
    with inbound_tenant(inbound_db, inbound_server.base_url) as tenant:
        yield tenant


@pytest.fixture
def stripe_api(localstripe_server: LocalStripe) -> stripe.StripeClient:
    return stripe.StripeClient(STRIPE_KEY, base_addresses={"api": localstripe_server.base_url})


def create_customer(inbound: InboundTenant, **fields: Any) -> dict[str, Any]:
    response = inbound.api.post("/v1/customers", json={"name": "Ada Lovelace", **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_applied(inbound: InboundTenant, stripe_event_id: str) -> dict[str, Any]:
    def applied() -> dict[str, Any] | None:
        event = inbound.event_for(stripe_event_id)
        return event if event["status"] == "applied" else None

    return wait_for(applied, what=f"event {stripe_event_id} to be applied")


def set_pushed_snapshot(db: DatabaseUnderTest, stripe_id: str, snapshot: dict[str, Any]) -> None:
    """What the outbound worker records after writing a customer to Stripe."""

    async def work(session: AsyncSession) -> None:
        await session.execute(
            update(CustomerLink).where(CustomerLink.stripe_customer_id == stripe_id).values(pushed_snapshot=snapshot)
        )

    db.run(work)


def mapped(**fields: Any) -> dict[str, Any]:
    """The mapped fields of a customer (flexsync names), as the outbound worker records them."""
    names = ("name", "email", "address_line1", "address_line2", "address_city", "address_state")
    base: dict[str, Any] = dict.fromkeys((*names, "address_postal_code", "address_country"))
    return {**base, **fields}


# -- order ----------------------------------------------------------------------------------------------------


def test_an_update_arriving_before_its_create_wins(inbound: InboundTenant) -> None:
    now = int(time.time())
    obj = stripe_customer(name="Original")
    created = stripe_event("customer.created", obj, created=now - 3)
    updated = stripe_event("customer.updated", {**obj, "name": "Renamed"}, created=now)

    inbound.deliver_ok(updated, "applied")  # an unknown customer: created and linked from the update
    inbound.deliver_ok(created, "applied")

    customer = inbound.customer_for(obj["id"])
    assert customer["name"] == "Renamed"
    assert "newer event" in inbound.event_for(created["id"])["note"]


def test_a_create_in_the_same_second_as_an_applied_update_is_older(inbound: InboundTenant) -> None:
    now = int(time.time())
    obj = stripe_customer(name="Original")
    inbound.deliver_ok(stripe_event("customer.updated", {**obj, "name": "Renamed"}, created=now), "applied")
    inbound.deliver_ok(stripe_event("customer.created", obj, created=now), "applied")
    assert inbound.customer_for(obj["id"])["name"] == "Renamed"


def test_an_older_update_after_a_newer_one_changes_nothing(inbound: InboundTenant) -> None:
    now = int(time.time())
    obj = stripe_customer(name="First")
    inbound.deliver_ok(stripe_event("customer.created", obj, created=now - 10), "applied")
    newer = stripe_event("customer.updated", {**obj, "name": "Third", "email": "third@example.com"}, created=now)
    older = stripe_event("customer.updated", {**obj, "name": "Second", "email": "second@example.com"}, created=now - 5)
    inbound.deliver_ok(newer, "applied")
    inbound.deliver_ok(older, "applied")

    customer = inbound.customer_for(obj["id"])
    assert (customer["name"], customer["email"]) == ("Third", "third@example.com")


def test_events_stamped_after_january_2038_are_stored_and_ordered(inbound: InboundTenant) -> None:
    # Past 2^31 seconds (2038-01-19) Stripe's `created` no longer fits a 32-bit column (migration 0006).
    late = 2**31 + 3600
    obj = stripe_customer(name="First")
    inbound.deliver_ok(stripe_event("customer.created", obj, created=late - 10), "applied")
    newer = stripe_event("customer.updated", {**obj, "name": "Third"}, created=late)
    older = stripe_event("customer.updated", {**obj, "name": "Second"}, created=late - 5)
    inbound.deliver_ok(newer, "applied")
    inbound.deliver_ok(older, "applied")

    assert inbound.customer_for(obj["id"])["name"] == "Third"
    assert inbound.event_for(newer["id"])["stripe_created"] == late
    # A `created` that is no Unix time (beyond 64 bits, or negative) is stored as unknown (0), never failing.
    for created in (2**64, -5):
        odd = stripe_event("customer.created", stripe_customer(name="Odd"), created=created)
        inbound.deliver_ok(odd, "applied")
        assert inbound.event_for(odd["id"])["stripe_created"] == 0


@pytest.mark.parametrize("arrival", ["newest_first", "oldest_first"])
def test_two_updates_in_one_second_end_in_stripes_current_state(
    inbound: InboundTenant, stripe_api: stripe.StripeClient, arrival: str
) -> None:
    """Stripe's `created` has one-second resolution: the order of two updates in the same second is taken
    from Stripe itself (the customer is re-fetched from localstripe)."""
    current = stripe_api.v1.customers.create({"name": "Final Name", "email": "final@example.com"})
    obj = stripe_customer(current.id, name="Initial", email="initial@example.com")
    now = int(time.time())
    inbound.deliver_ok(stripe_event("customer.created", obj, created=now - 5), "applied")
    older = stripe_event("customer.updated", {**obj, "name": "Stale Name"}, created=now)
    newer = stripe_event("customer.updated", {**obj, "name": "Final Name", "email": "final@example.com"}, created=now)
    first, second = (newer, older) if arrival == "newest_first" else (older, newer)

    inbound.deliver_ok(first, "applied")
    assert inbound.deliver_ok(second)["status"] == "queued"  # waits for Stripe's current state
    wait_applied(inbound, second["id"])

    customer = inbound.customer_for(current.id)
    assert (customer["name"], customer["email"]) == ("Final Name", "final@example.com")
    assert len(inbound.customers_for(current.id)) == 1


def test_events_waiting_for_stripe_share_one_connection_to_stripe(
    inbound_db: DatabaseUnderTest, module_localstripe: LocalStripe, standin: StandIn, tmp_path: Path
) -> None:
    """Each same-second pair below makes the server fetch the customer from Stripe, in its own pass: all the
    fetches go over the one keep-alive connection of the server's Stripe client (a new connection is a new TLS
    handshake with Stripe). The stand-in, between the server and localstripe, counts the connections."""
    server = start_server(inbound_db, tmp_path, "--no-worker", FLEXSYNC_STRIPE_API_BASE=standin.base_url)
    sdk = stripe.StripeClient(STRIPE_KEY, base_addresses={"api": module_localstripe.base_url})
    try:
        with inbound_tenant(inbound_db, server.base_url) as inbound:
            standin.reset()
            for i in range(3):
                current = sdk.v1.customers.create({"name": f"Current {i}"})
                obj = stripe_customer(current.id, name=f"Initial {i}")
                now = int(time.time())
                inbound.deliver_ok(stripe_event("customer.created", obj, created=now - 5), "applied")
                inbound.deliver_ok(stripe_event("customer.updated", {**obj, "name": "Stale"}, created=now), "applied")
                second = stripe_event("customer.updated", {**obj, "name": "Also Stale"}, created=now)
                assert inbound.deliver_ok(second)["status"] == "queued"
                wait_applied(inbound, second["id"])
                assert inbound.customer_for(current.id)["name"] == f"Current {i}"
    finally:
        server.stop()

    stats = standin.stats()
    assert stats["requests"] == {"GET /v1/customers/{id}": 3}
    assert stats["connections"] == 1


# -- duplicate prevention ---------------------------------------------------------------------------------------


def test_flexprice_customer_id_in_stripe_metadata_links_the_existing_customer(inbound: InboundTenant) -> None:
    """How flexsync's own pushes come back: the Stripe customer names the customer it was made from."""
    by_id = create_customer(inbound, external_id="crm-1", email="one@example.com")
    by_external_id = create_customer(inbound, external_id="crm-2", email="two@example.com")
    first = stripe_customer(name="Renamed In Stripe", metadata={"flexprice_customer_id": by_id["id"]})
    second = stripe_customer(metadata={"flexprice_customer_id": "crm-2"})

    inbound.deliver_ok(stripe_event("customer.created", first), "applied")
    inbound.deliver_ok(stripe_event("customer.created", second), "applied")

    linked = inbound.api.get(f"/v1/customers/{by_id['id']}").json()
    assert linked["metadata"] == {"stripe_customer_id": first["id"]}
    assert linked["name"] == "Ada Lovelace"  # flexsync's record: linking does not overwrite it
    assert (
        inbound.api.get(f"/v1/customers/{by_external_id['id']}").json()["metadata"]["stripe_customer_id"]
        == (second["id"])
    )
    assert len(inbound.customers()) == 2
    assert inbound.sync_status(by_id["id"])["link_status"] == "linked"


def test_an_unknown_flexprice_customer_id_becomes_the_external_id(inbound: InboundTenant) -> None:
    obj = stripe_customer(metadata={"flexprice_customer_id": "crm-from-elsewhere"})
    inbound.deliver_ok(stripe_event("customer.created", obj), "applied")
    assert inbound.customer_for(obj["id"])["external_id"] == "crm-from-elsewhere"


def test_a_customer_linked_elsewhere_is_not_taken_over(inbound: InboundTenant) -> None:
    owner = stripe_customer()
    inbound.deliver_ok(stripe_event("customer.created", owner), "applied")
    taken = inbound.customer_for(owner["id"])
    claimant = stripe_customer(metadata={"flexprice_customer_id": taken["id"]})

    event = stripe_event("customer.created", claimant)
    inbound.deliver_ok(event, "applied")

    created = inbound.customer_for(claimant["id"])
    assert created["id"] != taken["id"] and created["external_id"] == claimant["id"]
    assert inbound.customer_for(owner["id"])["id"] == taken["id"]
    assert "already linked" in inbound.event_for(event["id"])["note"]


def test_email_matching_links_the_one_unlinked_customer_with_that_email(
    inbound_db: DatabaseUnderTest, inbound_server: Server
) -> None:
    with inbound_tenant(inbound_db, inbound_server.base_url, {"email_matching": True}) as inbound:
        existing = create_customer(inbound, external_id="crm-7", email="Grace@Example.com")
        twin_a = create_customer(inbound, external_id="crm-8", email="twin@example.com")
        create_customer(inbound, external_id="crm-9", email="twin@example.com")
        matched = stripe_customer(email="grace@example.com")
        ambiguous = stripe_customer(email="twin@example.com")

        inbound.deliver_ok(stripe_event("customer.created", matched), "applied")
        event = stripe_event("customer.created", ambiguous)
        inbound.deliver_ok(event, "applied")

        assert inbound.customer_for(matched["id"])["id"] == existing["id"]
        made = inbound.customer_for(ambiguous["id"])
        assert made["id"] != twin_a["id"] and made["created_by"] == "stripe"
        assert "2 unlinked customers" in inbound.event_for(event["id"])["note"]
        assert len(inbound.customers()) == 4


def test_without_email_matching_a_same_email_customer_is_not_linked(inbound: InboundTenant) -> None:
    existing = create_customer(inbound, external_id="crm-5", email="ada@example.com")
    obj = stripe_customer(email="ada@example.com")
    inbound.deliver_ok(stripe_event("customer.created", obj), "applied")
    assert inbound.customer_for(obj["id"])["id"] != existing["id"]
    assert "stripe_customer_id" not in inbound.api.get(f"/v1/customers/{existing['id']}").json()["metadata"]


# -- updates and echoes -----------------------------------------------------------------------------------------


def test_an_update_changes_name_email_and_address_only(inbound: InboundTenant) -> None:
    now = int(time.time())
    obj = stripe_customer()
    inbound.deliver_ok(stripe_event("customer.created", obj, created=now - 5), "applied")
    before = inbound.customer_for(obj["id"])
    address = {"line1": "1 New St", "city": "Paris", "postal_code": "75001", "country": "FR"}
    changed = {**obj, "name": "Ada King", "email": "king@example.com", "address": address, "phone": "+33100000000"}

    inbound.deliver_ok(stripe_event("customer.updated", changed, created=now), "applied")

    after = inbound.customer_for(obj["id"])
    assert (after["name"], after["email"], after["address_line1"]) == ("Ada King", "king@example.com", "1 New St")
    assert (after["address_city"], after["address_postal_code"], after["address_country"]) == ("Paris", "75001", "FR")
    assert after["address_line2"] is None and after["address_state"] is None
    assert (after["id"], after["external_id"], after["created_at"]) == (
        before["id"],
        before["external_id"],
        before["created_at"],
    )
    assert after["updated_by"] == "stripe" and after["updated_at"] > before["updated_at"]
    assert inbound.sync_status(after["id"])["pending_jobs"] == []


def test_an_echo_of_what_flexsync_pushed_changes_nothing(inbound: InboundTenant) -> None:
    now = int(time.time())
    obj = stripe_customer(name="Pushed Name", email="pushed@example.com", address=None)
    inbound.deliver_ok(stripe_event("customer.created", obj, created=now - 5), "applied")
    customer = inbound.customer_for(obj["id"])
    set_pushed_snapshot(inbound.db, obj["id"], mapped(name="Pushed Name", email="pushed@example.com"))
    # flexsync changed the customer since its push; the push of that change has not happened yet.
    inbound.api.put(f"/v1/customers/{customer['id']}", json={"name": "Changed Locally"})

    echo = stripe_event("customer.updated", obj, created=now)
    inbound.deliver_ok(echo, "applied")

    assert inbound.customer_for(obj["id"])["name"] == "Changed Locally"
    assert "last pushed" in inbound.event_for(echo["id"])["note"]


def test_a_value_that_does_not_fit_is_not_taken_for_a_late_echo(inbound: InboundTenant) -> None:
    # Someone typed a 3-letter country into Stripe for a customer flexsync pushed. Everything else still
    # matches the push, so this is no echo of an older push and needs no look at Stripe's current state (the
    # server's Stripe, localstripe, does not know this customer: a look would find it gone and change nothing).
    now = int(time.time())
    address = {"line1": "1 Main St", "country": "GB"}
    obj = stripe_customer(name="Pushed Name", email="pushed@example.com", address=address)
    inbound.deliver_ok(stripe_event("customer.created", obj, created=now - 5), "applied")
    pushed = mapped(name="Pushed Name", email="pushed@example.com", address_line1="1 Main St", address_country="GB")
    set_pushed_snapshot(inbound.db, obj["id"], pushed)

    update = stripe_event("customer.updated", {**obj, "address": {**address, "country": "GBR"}}, created=now)
    assert inbound.deliver_ok(update)["status"] == "applied"

    assert inbound.customer_for(obj["id"])["address_country"] == "GB"
    note = inbound.event_for(update["id"])["note"]
    assert "last pushed" in note and "GBR" in note


def test_a_late_echo_of_an_older_push_defers_to_stripes_current_state(
    inbound: InboundTenant, stripe_api: stripe.StripeClient
) -> None:
    current = stripe_api.v1.customers.create({"name": "Second Push", "email": "second@example.com"})
    now = int(time.time())
    obj = stripe_customer(current.id, name="Second Push", email="second@example.com", address=None)
    inbound.deliver_ok(stripe_event("customer.created", obj, created=now - 5), "applied")
    set_pushed_snapshot(inbound.db, current.id, mapped(name="Second Push", email="second@example.com"))

    late_echo = stripe_event("customer.updated", {**obj, "name": "First Push"}, created=now)
    assert inbound.deliver_ok(late_echo)["status"] == "queued"
    wait_applied(inbound, late_echo["id"])

    assert inbound.customer_for(current.id)["name"] == "Second Push"


# -- deletion ---------------------------------------------------------------------------------------------------


def deleted_in_stripe(inbound: InboundTenant, now: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Stripe customer created, then deleted; returns the customer object and the flexsync customer."""
    obj = stripe_customer()
    inbound.deliver_ok(stripe_event("customer.created", obj, created=now - 10), "applied")
    customer = inbound.customer_for(obj["id"])
    inbound.deliver_ok(stripe_event("customer.deleted", {**obj, "deleted": True}, created=now - 5), "applied")
    return obj, customer


def test_deletion_in_stripe_is_recorded_and_by_default_keeps_the_customer(inbound: InboundTenant) -> None:
    now = int(time.time())
    obj, customer = deleted_in_stripe(inbound, now)

    kept = inbound.api.get(f"/v1/customers/{customer['id']}").json()
    assert kept["status"] == "published" and kept["metadata"]["stripe_customer_id"] == obj["id"]
    assert inbound.sync_status(customer["id"])["link_status"] == "deleted_in_stripe"
    # A late update for the deleted Stripe customer changes nothing.
    inbound.deliver_ok(stripe_event("customer.updated", {**obj, "name": "Ghost"}, created=now), "applied")
    assert inbound.api.get(f"/v1/customers/{customer['id']}").json()["name"] == "Ada Lovelace"


def test_on_stripe_delete_unlink_removes_the_link_and_nothing_comes_back(
    inbound_db: DatabaseUnderTest, inbound_server: Server
) -> None:
    with inbound_tenant(inbound_db, inbound_server.base_url, {"on_stripe_delete": "unlink"}) as inbound:
        now = int(time.time())
        obj, customer = deleted_in_stripe(inbound, now)

        unlinked = inbound.api.get(f"/v1/customers/{customer['id']}").json()
        assert unlinked["status"] == "published" and "stripe_customer_id" not in unlinked["metadata"]
        assert inbound.sync_status(customer["id"])["link_status"] == "not_linked"
        # Events that were on their way when the customer was deleted do not recreate it.
        inbound.deliver_ok(stripe_event("customer.updated", {**obj, "name": "Ghost"}, created=now - 7), "applied")
        assert inbound.customers_for(obj["id"]) == [] and len(inbound.customers()) == 1


def test_on_stripe_delete_archive_archives_the_customer(inbound_db: DatabaseUnderTest, inbound_server: Server) -> None:
    with inbound_tenant(inbound_db, inbound_server.base_url, {"on_stripe_delete": "archive"}) as inbound:
        _, customer = deleted_in_stripe(inbound, int(time.time()))
        archived = inbound.api.get(f"/v1/customers/{customer['id']}").json()
        assert archived["status"] == "archived" and archived["updated_by"] == "stripe"
        assert inbound.sync_status(customer["id"])["link_status"] == "deleted_in_stripe"


def test_deleting_an_unknown_stripe_customer_is_recorded(inbound: InboundTenant) -> None:
    event = stripe_event("customer.deleted", {**stripe_customer(), "deleted": True})
    inbound.deliver_ok(event, "applied")
    assert "no customer is linked" in inbound.event_for(event["id"])["note"]
    assert inbound.customers() == []


# -- data no database column can hold ---------------------------------------------------------------------------


def test_stripe_text_holding_a_nul_character_is_left_out_and_the_rest_applied(inbound: InboundTenant) -> None:
    # PostgreSQL's text cannot hold U+0000 (SQLite can): such values are left out on both, with a note, as
    # other data that does not fit; the event is applied, never lost or retried in vain.
    address = {"line1": "12 Analytical\x00 Row", "city": "London", "country": "GB"}
    obj = stripe_customer(name="Ada\x00", address=address, metadata={"flexprice_customer_id": "cust_\x00"})
    event = stripe_event("customer.created", obj)

    inbound.deliver_ok(event, "applied")

    customer = inbound.customer_for(obj["id"])
    assert customer["name"] == "ada@example.com"  # the name left out: the email stands in
    assert customer["address_line1"] is None and customer["address_city"] == "London"
    note = inbound.event_for(event["id"])["note"]
    assert "name contains the NUL character" in note and "address_line1 contains the NUL character" in note
    assert "metadata.flexprice_customer_id is not a usable customer id" in note


def test_a_flexprice_id_longer_than_any_customer_id_is_not_used(inbound: InboundTenant) -> None:
    # It would become the new customer's external_id, a column of 255 characters: the event failed on every
    # retry on PostgreSQL until dead, and no customer was made.
    obj = stripe_customer(name="Long Id", metadata={"flexprice_customer_id": "x" * 300})
    event = stripe_event("customer.created", obj)
    inbound.deliver_ok(event, "applied")
    assert inbound.customer_for(obj["id"])["external_id"] == obj["id"]
    assert "metadata.flexprice_customer_id is not a usable customer id" in inbound.event_for(event["id"])["note"]


def test_events_whose_ids_no_column_can_hold(inbound: InboundTenant) -> None:
    # A customer id longer than the columns holding Stripe ids, or holding a NUL character: stored, ignored.
    for stripe_id in ("cus_" + "x" * 300, "cus_\x00"):
        event = stripe_event("customer.created", stripe_customer(stripe_id))
        inbound.deliver_ok(event, "ignored")
        assert "no usable Stripe id" in inbound.event_for(event["id"])["note"]
    # A connected account's id holding one is written out in the note.
    connected = {**stripe_event("customer.created", stripe_customer()), "account": "acct_\x00"}
    inbound.deliver_ok(connected, "ignored")
    assert "connected account acct_\\u0000" in inbound.event_for(connected["id"])["note"]
    # An event id or type holding one is no Stripe event: refused, nothing stored.
    for broken in ({"id": "evt_\x00"}, {"type": "customer.created\x00"}):
        response = inbound.deliver({**stripe_event("customer.created", stripe_customer()), **broken})
        assert response.status_code == 400 and response.json()["details"]["reason"] == "not_an_event", response.text
    assert len(inbound.events()) == 3 and inbound.customers() == []


# -- test and live mode, connected accounts ---------------------------------------------------------------------


def test_an_event_of_the_other_mode_or_another_account_is_stored_but_never_applied(inbound: InboundTenant) -> None:
    # The tenant's connection has test-mode keys; a live-mode endpoint's signing secret stored on it by mistake
    # must not bring live customers into the test environment.
    obj = stripe_customer(name="Live Customer", livemode=True)
    live = {**stripe_event("customer.created", obj), "livemode": True}

    inbound.deliver_ok(live, "ignored")

    stored = inbound.event_for(live["id"])
    assert stored["status"] == "ignored" and stored["livemode"] is True
    assert "live-mode event" in stored["note"] and "test mode" in stored["note"]
    assert inbound.customers() == []
    # Replayed, it is refused again.
    replayed = inbound.api.post(f"/v1/webhook-events/{stored['id']}/replay")
    assert replayed.status_code == 200 and replayed.json()["status"] == "ignored", replayed.text
    assert inbound.customers() == []
    # Nor does an event of a connected account (a Stripe Connect endpoint's) get applied.
    connected = {**stripe_event("customer.created", {**obj, "livemode": False}), "account": "acct_1Connected"}
    inbound.deliver_ok(connected, "ignored")
    assert "connected account acct_1Connected" in inbound.event_for(connected["id"])["note"]
    assert inbound.customers() == []
    # The same customer from test mode, of the connection's own account, is applied as usual.
    inbound.deliver_ok(stripe_event("customer.created", {**obj, "livemode": False}), "applied")
    assert inbound.customer_for(obj["id"])["name"] == "Live Customer"


@pytest.mark.parametrize(
    ("connection_live", "event_live", "refused"),
    [(False, True, True), (True, False, True), (True, True, False), (False, False, False), (None, True, False)],
)
def test_only_events_of_the_connections_own_mode_are_applied(
    connection_live: bool | None, event_live: bool | None, refused: bool
) -> None:
    # None: a view without a mode (reconciliation reads the connection's own account, so takes every customer).
    view = ConnectionView("conn_1", "tenant_1", "env_1", effective_settings({}), livemode=connection_live)
    event = InboundEvent.from_payload(
        "whevt_1", "conn_1", {"id": "evt_1", "type": "customer.created", "livemode": event_live}
    )
    reason = view.not_ours(event)
    assert (reason is not None) == refused
    if reason is not None:
        assert reason.startswith(f"a {'live' if event_live else 'test'}-mode event")
    # An event that does not say which mode it is from (not Stripe's shape) is not refused for it.
    assert view.not_ours(InboundEvent.from_payload("whevt_2", "conn_1", {"id": "evt_2", "type": "x"})) is None


@pytest.mark.parametrize(
    ("own_account", "event_account", "refused"),
    [
        (None, None, False),  # the account's own event, its id not verified yet
        ("acct_own", None, False),
        (None, "acct_other", True),  # a connected account's event (a Connect endpoint's)
        ("acct_own", "acct_other", True),
        ("acct_own", "acct_own", False),  # keys of a connected account, its events through the platform
    ],
)
def test_only_the_connections_own_accounts_events_are_applied(
    own_account: str | None, event_account: str | None, refused: bool
) -> None:
    view = ConnectionView("conn_1", "tenant_1", "env_1", effective_settings({}), stripe_account_id=own_account)
    payload = {"id": "evt_1", "type": "customer.created", "livemode": False, "account": event_account}
    reason = view.not_ours(InboundEvent.from_payload("whevt_1", "conn_1", payload))
    assert (reason is not None) == refused
    if reason is not None:
        assert f"connected account {event_account}" in reason


# -- the webhook-events API -------------------------------------------------------------------------------------


def test_webhook_events_are_listed_newest_first_with_filters(inbound: InboundTenant) -> None:
    obj = stripe_customer()
    created = stripe_event("customer.created", obj)
    other = stripe_event("charge.succeeded", {"id": "ch_1", "object": "charge"})
    inbound.deliver_ok(created, "applied")
    inbound.deliver_ok(other, "ignored")

    listed = inbound.api.get("/v1/webhook-events").json()
    assert [e["stripe_event_id"] for e in listed["items"]] == [other["id"], created["id"]]
    assert listed["pagination"] == {"total": 2, "limit": 50, "offset": 0}
    assert set(listed["items"][0]) == {
        "id", "stripe_event_id", "type", "status", "attempts", "last_error", "note", "customer_id",
        "stripe_object_id", "connection_id", "livemode", "stripe_created", "received_at", "processed_at",
        "next_attempt_at", "source",
    }  # fmt: skip
    assert [e["stripe_event_id"] for e in inbound.events(status="ignored")] == [other["id"]]
    # Totals count this environment's events alone (other tests' tenants have theirs in the same table).
    for params, total in (({"status": "ignored"}, 1), ({"type": "customer.created"}, 1), ({"status": "failed"}, 0)):
        assert inbound.api.get("/v1/webhook-events", params=params).json()["pagination"]["total"] == total, params
    assert [e["stripe_event_id"] for e in inbound.events(type="customer.created")] == [created["id"]]
    page = inbound.api.get("/v1/webhook-events", params={"limit": 1, "offset": 1}).json()
    assert [e["stripe_event_id"] for e in page["items"]] == [created["id"]] and page["pagination"]["total"] == 2
    assert inbound.api.get("/v1/webhook-events", params={"status": "bogus"}).status_code == 400
    assert inbound.api.get("/v1/webhook-events/whevt_unknown").status_code == 404
    assert httpx.get(f"{inbound.tenant.base_url}/v1/webhook-events", timeout=10).status_code == 401


def test_replay_applies_a_stored_event_again_under_the_ordering_rules(inbound: InboundTenant) -> None:
    now = int(time.time())
    obj = stripe_customer(name="First")
    created = stripe_event("customer.created", obj, created=now - 5)
    updated = stripe_event("customer.updated", {**obj, "name": "Second"}, created=now)
    inbound.deliver_ok(created, "applied")
    inbound.deliver_ok(updated, "applied")
    stored = inbound.event_for(created["id"])

    replayed = inbound.api.post(f"/v1/webhook-events/{stored['id']}/replay")

    assert replayed.status_code == 200, replayed.text
    body = replayed.json()
    assert (body["id"], body["status"], body["attempts"]) == (stored["id"], "applied", 2)
    assert "newer event" in body["note"]
    assert inbound.customer_for(obj["id"])["name"] == "Second"
    assert inbound.api.post("/v1/webhook-events/whevt_unknown/replay").status_code == 404


def flexsync_cli(db: DatabaseUnderTest, localstripe: LocalStripe, *args: str) -> Completed:
    return run_flexsync(list(args), env=server_env(db, FLEXSYNC_STRIPE_API_BASE=localstripe.base_url))


def test_flexsync_events_replay_by_either_id(inbound: InboundTenant, localstripe_server: LocalStripe) -> None:
    obj = stripe_customer()
    event = stripe_event("customer.created", obj)
    inbound.deliver_ok(event, "applied")
    stored = inbound.event_for(event["id"])

    by_ours = flexsync_cli(inbound.db, localstripe_server, "events", "replay", stored["id"], "--json")
    assert by_ours.returncode == 0, by_ours.stderr
    result = json.loads(by_ours.stdout)
    assert (result["id"], result["status"], result["attempts"]) == (stored["id"], "applied", 2)
    assert result["customer_id"] == inbound.customer_for(obj["id"])["id"]

    by_stripes = flexsync_cli(inbound.db, localstripe_server, "events", "replay", event["id"])
    assert by_stripes.returncode == 0, by_stripes.stderr
    assert f"{stored['id']} ({event['id']}, customer.created): applied" in by_stripes.stdout
    assert len(inbound.customers_for(obj["id"])) == 1

    missing = flexsync_cli(inbound.db, localstripe_server, "events", "replay", "evt_doesnotexist")
    assert missing.returncode == 1 and "not found" in missing.stderr
