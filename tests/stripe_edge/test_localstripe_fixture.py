"""The Stripe stand-in itself answers the official SDK (guards the fixture every sync test relies on)."""

from __future__ import annotations

import stripe

from tests.support import LocalStripe


def test_official_sdk_talks_to_localstripe(localstripe_server: LocalStripe) -> None:
    client = stripe.StripeClient("sk_test_fixture", base_addresses={"api": localstripe_server.base_url})
    created = client.v1.customers.create({"name": "Fixture", "email": "f@example.com", "metadata": {"k": "v"}})
    fetched = client.v1.customers.retrieve(created.id)
    assert (fetched.name, fetched.email, fetched.metadata["k"]) == ("Fixture", "f@example.com", "v")
