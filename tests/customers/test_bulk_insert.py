"""`kit.bulk.Inserts`: rows written together come back exactly as given, on SQLite and PostgreSQL.

On PostgreSQL the rows travel as one JSON document per table (json_populate_recordset), so what JSON could
garble is checked here: quotes, backslashes, non-ASCII text, NULLs, nested JSON columns, microseconds and time
zones; and the stored webhook payloads, which travel beside the rows as a text array of their own, must each
land on their own event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.ids import new_id
from flexsync.kit.bulk import Inserts
from flexsync.models import Customer, CustomerLink, WebhookEvent
from flexsync.sync.inbound import CUSTOMERS, EVENTS, LINKS
from flexsync.webhooks import repository
from tests.support import DatabaseUnderTest, new_tenant
from tests.webhook_support import add_stripe_connection


@dataclass(frozen=True)
class Connection:
    id: str
    tenant_id: str
    environment_id: str


AWKWARD = 'Zoë "the \\ quoter" O\'Brien — 北京 🚀\ttab\nnewline'


def _connection(database: DatabaseUnderTest) -> Connection:
    tenant = new_tenant(database, base_url="")
    return Connection(add_stripe_connection(database, tenant), tenant.tenant_id, tenant.environment_id)


def _customer(connection: Connection, n: int, created: datetime) -> dict[str, Any]:
    return {
        "id": new_id("cust"),
        "tenant_id": connection.tenant_id,
        "environment_id": connection.environment_id,
        "external_id": f"ext-{n}",
        "name": AWKWARD if n == 0 else f"Customer {n}",
        "email": None if n == 1 else f"c{n}@example.com",
        "address_line1": AWKWARD,
        "address_line2": None,
        "address_city": "Zürich",
        "address_state": None,
        "address_postal_code": "8001",
        "address_country": "CH",
        "metadata": {"stripe_customer_id": f"cus_{n}", "nested": {"list": [1, "two", None], "quote": AWKWARD}},
        "status": "published",
        "parent_customer_id": None,
        "version": 1,
        "created_at": created,
        "updated_at": created,
        "created_by": "test",
        "updated_by": "test",
    }


def _event(connection: Connection, customer_id: str, stripe_event_id: str, received: datetime) -> dict[str, Any]:
    # Pretty-printed, as Stripe sends it: real newlines and indentation, escaped quotes inside.
    payload = orjson.dumps(
        {"id": stripe_event_id, "data": {"object": {"name": AWKWARD}}}, option=orjson.OPT_INDENT_2
    ).decode()
    return {
        "id": new_id("whevt"),
        "tenant_id": connection.tenant_id,
        "environment_id": connection.environment_id,
        "connection_id": connection.id,
        "stripe_event_id": stripe_event_id,
        "type": "customer.created",
        "stripe_object_id": "cus_0",
        "stripe_created": 1_700_000_000,
        "livemode": False,
        "payload": payload,
        "status": "applied",
        "attempts": 1,
        "last_error": None,
        "note": AWKWARD,
        "customer_id": customer_id,
        "next_attempt_at": None,
        "received_at": received,
        "processed_at": received,
    }


def test_rows_of_several_tables_come_back_exactly(database: DatabaseUnderTest) -> None:
    created = datetime(2026, 11, 27, 6, 30, 15, 123456, tzinfo=UTC)
    # An aware time in another zone is stored as the same instant.
    received = datetime(2026, 11, 27, 8, 30, 15, 654321, tzinfo=timezone(timedelta(hours=2)))

    connection = _connection(database)

    async def work(session: AsyncSession) -> None:
        customers = [_customer(connection, n, created) for n in range(3)]
        link = {
            "id": new_id("link"),
            "connection_id": connection.id,
            "customer_id": customers[0]["id"],
            "stripe_customer_id": "cus_0",
            "status": "linked",
            "last_event_created": 1_700_000_000,
            "last_event_id": "evt_0",
            "pushed_snapshot": {"name": AWKWARD, "address": {"country": "CH"}},
            "last_synced_at": None,
            "last_error": None,
            "created_at": created,
            "updated_at": created,
        }
        events = [_event(connection, customers[0]["id"], f"evt_{n}", received) for n in range(3)]
        inserts = Inserts()
        inserts.add(CUSTOMERS, customers)
        inserts.add(LINKS, [link])
        repository.add_events(inserts, events)
        returned = await inserts.write(session)
        assert sorted(returned) == sorted(e["id"] for e in events)

        stored = {
            c.external_id: c
            for c in (
                await session.execute(select(Customer).where(Customer.environment_id == connection.environment_id))
            ).scalars()
        }
        assert set(stored) == {"ext-0", "ext-1", "ext-2"}
        first = stored["ext-0"]
        assert first.name == AWKWARD
        assert first.address_line1 == AWKWARD
        assert first.address_city == "Zürich"
        assert first.address_line2 is None
        assert stored["ext-1"].email is None
        assert first.metadata_ == customers[0]["metadata"]
        assert first.created_at == created

        stored_link = (await session.execute(select(CustomerLink).where(CustomerLink.id == link["id"]))).scalar_one()
        assert stored_link.pushed_snapshot == link["pushed_snapshot"]
        assert stored_link.last_synced_at is None
        assert stored_link.last_event_created == 1_700_000_000

        stored_events = {
            e.stripe_event_id: e
            for e in (
                await session.execute(select(WebhookEvent).where(WebhookEvent.connection_id == connection.id))
            ).scalars()
        }
        assert {e.stripe_event_id: e.payload for e in stored_events.values()} == {
            e["stripe_event_id"]: e["payload"] for e in events
        }
        assert orjson.loads(stored_events["evt_0"].payload)["data"]["object"]["name"] == AWKWARD
        assert stored_events["evt_0"].note == AWKWARD
        assert stored_events["evt_0"].livemode is False
        assert stored_events["evt_0"].received_at == received
        assert stored_events["evt_0"].received_at.utcoffset() == timedelta(0)

    database.run(work)


def test_rows_that_conflict_are_skipped_and_not_returned(database: DatabaseUnderTest) -> None:
    now = datetime.now(UTC)

    connection = _connection(database)

    async def work(session: AsyncSession) -> None:
        customer = _customer(connection, 0, now)
        first = Inserts()
        first.add(CUSTOMERS, [customer])
        first.add(EVENTS, [_event(connection, customer["id"], "evt_a", now)], returning="id")
        await first.write(session)

        again = [_event(connection, customer["id"], "evt_a", now), _event(connection, customer["id"], "evt_b", now)]
        second = Inserts()
        second.add(EVENTS, again, skip_conflicts_on=("connection_id", "stripe_event_id"), returning="id")
        assert await second.write(session) == [again[1]["id"]]
        count = (
            await session.execute(select(WebhookEvent.id).where(WebhookEvent.connection_id == connection.id))
        ).all()
        assert len(count) == 2

    database.run(work)
