"""Helpers for the inbound (Stripe -> flexsync) tests: connections, signed Stripe events, a tenant to deliver to."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.crypto import SecretBox
from flexsync.ids import new_id
from flexsync.models import StripeConnection
from tests.support import TEST_ENCRYPTION_KEY, DatabaseUnderTest, TenantContext, new_tenant, store_connection

T = TypeVar("T")
WEBHOOK_SECRET = "whsec_flexsyncinboundtests"
# Any sk_test_ key works with localstripe, which the test server re-fetches customers from.
STRIPE_KEY = "sk_test_flexsyncinbound"


def sign(payload: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """A `Stripe-Signature` header as Stripe builds it: t=<unix>,v1=<hex HMAC-SHA256(secret, "t.payload")>."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def stripe_customer(stripe_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """A Stripe customer object as a webhook carries it."""
    customer: dict[str, Any] = {
        "id": stripe_id or f"cus_{new_id('t')[2:]}",
        "object": "customer",
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "address": {
            "line1": "12 Analytical Row",
            "line2": None,
            "city": "London",
            "state": None,
            "postal_code": "NW1 6XE",
            "country": "GB",
        },
        "metadata": {},
        "created": int(time.time()),
        "livemode": False,
    }
    customer.update(fields)
    return customer


def stripe_event(event_type: str, data_object: dict[str, Any], *, created: int | None = None) -> dict[str, Any]:
    return {
        "id": f"evt_{new_id('t')[2:]}",
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()) if created is None else created,
        "data": {"object": data_object},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


def add_stripe_connection(
    db: DatabaseUnderTest,
    tenant: TenantContext,
    *,
    settings: dict[str, Any] | None = None,
    secrets: Sequence[str] = (WEBHOOK_SECRET,),
    status: str = "active",
) -> str:
    """A Stripe connection row for inbound tests, stored as the connections API stores it (secrets encrypted)."""
    return store_connection(
        db,
        tenant,
        name="Inbound test Stripe",
        secret_key=STRIPE_KEY,
        publishable_key="pk_test_flexsyncinbound",
        webhook_secrets=secrets,
        settings=settings,
        status=status,
    )


def replace_webhook_secrets(db: DatabaseUnderTest, connection_id: str, secrets: Sequence[str]) -> None:
    box = SecretBox([TEST_ENCRYPTION_KEY])

    async def work(session: AsyncSession) -> None:
        await session.execute(
            update(StripeConnection)
            .where(StripeConnection.id == connection_id)
            .values(webhook_secrets_encrypted=[box.encrypt(secret) for secret in secrets])
        )

    db.run(work)


@dataclass
class InboundTenant:
    """A fresh tenant whose environment has a Stripe connection; delivers signed events to its webhook URL."""

    db: DatabaseUnderTest
    tenant: TenantContext
    connection_id: str
    api: httpx.Client

    @property
    def webhook_path(self) -> str:
        return f"/v1/webhooks/stripe/{self.tenant.tenant_id}/{self.tenant.environment_id}"

    @property
    def webhook_url(self) -> str:
        return self.tenant.base_url + self.webhook_path

    def deliver(
        self,
        event: dict[str, Any] | bytes,
        *,
        secret: str = WEBHOOK_SECRET,
        timestamp: int | None = None,
        path: str | None = None,
    ) -> httpx.Response:
        """POST the event as Stripe does: pretty-printed JSON, signed, without an API key."""
        body = event if isinstance(event, bytes) else json.dumps(event, indent=2).encode()
        headers = {"Content-Type": "application/json; charset=utf-8", "Stripe-Signature": sign(body, secret, timestamp)}
        return httpx.post(self.tenant.base_url + (path or self.webhook_path), content=body, headers=headers, timeout=30)

    def deliver_ok(self, event: dict[str, Any], expected_status: str | None = None) -> dict[str, Any]:
        response = self.deliver(event)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert body["received"] is True and body["event_id"] == event["id"]
        if expected_status is not None:
            assert body["status"] == expected_status, body
        return body

    def customers(self) -> list[dict[str, Any]]:
        response = self.api.get("/v1/customers", params={"status": "all", "limit": 1000})
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def customers_for(self, stripe_id: str) -> list[dict[str, Any]]:
        return [c for c in self.customers() if c["metadata"].get("stripe_customer_id") == stripe_id]

    def customer_for(self, stripe_id: str) -> dict[str, Any]:
        found = self.customers_for(stripe_id)
        assert len(found) == 1, found
        return found[0]

    def events(self, **params: Any) -> list[dict[str, Any]]:
        response = self.api.get("/v1/webhook-events", params={"limit": 1000, **params})
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def event_for(self, stripe_event_id: str) -> dict[str, Any]:
        found = [e for e in self.events() if e["stripe_event_id"] == stripe_event_id]
        assert len(found) == 1, found
        return found[0]

    def sync_status(self, customer_id: str) -> dict[str, Any]:
        response = self.api.get(f"/v1/customers/{customer_id}/sync")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@contextmanager
def inbound_tenant(
    db: DatabaseUnderTest,
    base_url: str,
    settings: dict[str, Any] | None = None,
    secrets: Sequence[str] = (WEBHOOK_SECRET,),
) -> Iterator[InboundTenant]:
    tenant = new_tenant(db, base_url)
    connection_id = add_stripe_connection(db, tenant, settings=settings, secrets=secrets)
    with tenant.client() as api:
        yield InboundTenant(db, tenant, connection_id, api)
