"""Faults while applying Stripe events: the event is kept, retried with backoff, applied once.

The first tests run the app in-process (httpx's ASGITransport, with the app's lifespan, so its ingest and
retry tasks run) because they make things fail: the INSERT of customers fails (a trigger on PostgreSQL, a hook
on the app's own engine on SQLite), or the configured Stripe address has nothing listening. Everything else is real: the
signed deliveries, the database (SQLite and PostgreSQL), the retry sweep. The last one runs a real
`flexsync worker` process.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from flexsync.api import create_app
from flexsync.config import Settings
from flexsync.context import AppContext
from flexsync.ids import new_id
from flexsync.models import Customer, CustomerLink, WebhookEvent, utcnow
from tests.support import (
    TEST_ENCRYPTION_KEY,
    DatabaseUnderTest,
    LocalStripe,
    drop_every_connection,
    free_port,
    new_tenant,
    wait_for,
)
from tests.sync_support import start_worker
from tests.webhook_support import add_stripe_connection, sign, stripe_customer, stripe_event


class FailingCustomerInserts:
    """Makes the next `times` inserts of this tenant's customers fail, as if the database connection had dropped.

    PostgreSQL: a trigger raises, counting on a sequence (which a rollback does not undo), so the fault is the
    database's own, whichever way a statement reaches it (the webhook path runs its statements on the driver).
    SQLite: an SQLAlchemy hook on the app's engine raises before the statement is sent.
    """

    MESSAGE = "injected: the database went away"

    def __init__(self, db: DatabaseUnderTest, tenant_id: str, times: int) -> None:
        self.db = db
        self.tenant_id = tenant_id
        self.times = times
        self.hook_left = times
        self.name = f"fail_{tenant_id.lower()}"

    async def install(self, engine: AsyncEngine) -> None:
        if self.db.backend == "sqlite":
            event.listen(engine.sync_engine, "before_cursor_execute", self._hook)
            return
        await _run_ddl(
            engine,
            f"CREATE SEQUENCE {self.name}",
            f"CREATE FUNCTION {self.name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF nextval('{self.name}') <= {self.times} THEN RAISE EXCEPTION '{self.MESSAGE}'; END IF; "
            "RETURN NEW; END $$",
            f"CREATE TRIGGER {self.name} BEFORE INSERT ON customers FOR EACH ROW "
            f"WHEN (NEW.tenant_id = '{self.tenant_id}') EXECUTE FUNCTION {self.name}()",
        )

    async def remove(self, engine: AsyncEngine) -> None:
        if self.db.backend == "sqlite":
            event.remove(engine.sync_engine, "before_cursor_execute", self._hook)
            return
        await _run_ddl(
            engine,
            f"DROP TRIGGER {self.name} ON customers",
            f"DROP FUNCTION {self.name}()",
            f"DROP SEQUENCE {self.name}",
        )

    async def left(self, db: AppContext) -> int:
        if self.db.backend == "sqlite":
            return self.hook_left
        async with db.sessions() as session:
            # The name is made from the tenant id, an id flexsync made (letters, digits and `_`).
            row = (await session.execute(text(f"SELECT last_value, is_called FROM {self.name}"))).one()  # noqa: S608
        used = row.last_value if row.is_called else 0
        return max(self.times - used, 0)

    def _hook(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if self.hook_left > 0 and "INSERT INTO CUSTOMERS " in statement.upper():
            self.hook_left -= 1
            raise OperationalError(statement, None, ConnectionError(self.MESSAGE))


async def _run_ddl(engine: AsyncEngine, *statements: str) -> None:
    async with engine.begin() as connection:
        for statement in statements:
            await connection.execute(text(statement))


async def event_row(db: AppContext, stripe_event_id: str) -> WebhookEvent:
    async with db.sessions() as session:
        row = (
            await session.execute(select(WebhookEvent).where(WebhookEvent.stripe_event_id == stripe_event_id))
        ).scalar_one()
        return row


async def wait_status(db: AppContext, stripe_event_id: str, status: str) -> WebhookEvent:
    """Poll the stored event (the database is the only witness) until it has `status`; at most 20 s."""
    async with asyncio.timeout(20):
        while True:
            row = await event_row(db, stripe_event_id)
            if row.status == status:
                return row
            await asyncio.sleep(0.05)


async def count(db: AppContext, model: Any) -> int:
    async with db.sessions() as session:
        total: int = (await session.execute(select(func.count()).select_from(model))).scalar_one()
        return total


def test_an_event_that_fails_to_apply_is_kept_retried_and_applied_once(
    module_db: DatabaseUnderTest, localstripe_server: LocalStripe
) -> None:
    tenant = new_tenant(module_db, "http://flexsync.test")
    add_stripe_connection(module_db, tenant)
    obj = stripe_customer(name="Resilient Customer")
    stripe_evt = stripe_event("customer.created", obj)
    body = json.dumps(stripe_evt).encode()
    settings = Settings(
        database_url=module_db.url,
        encryption_keys=TEST_ENCRYPTION_KEY,
        stripe_api_base=localstripe_server.base_url,
        run_worker=False,
        # Retries sooner than the default 2 s and 4 s, yet late enough that the first failure is seen before the
        # retry.
        webhook_retry_first_seconds=1.0,
        webhook_retry_sweep_seconds=0.25,
    )
    app = create_app(settings)
    # Fails the try with its batch, and the first retry of the stored event; the next retry succeeds.
    failing = FailingCustomerInserts(module_db, tenant.tenant_id, times=2)

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            db: AppContext = app.state.db
            await failing.install(db.engine)
            try:
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://flexsync.test") as client:
                    response = await client.post(
                        f"/v1/webhooks/stripe/{tenant.tenant_id}/{tenant.environment_id}",
                        content=body,
                        headers={"Stripe-Signature": sign(body)},
                    )
                # Stored before the answer, even though applying failed.
                assert response.status_code == 200, response.text
                assert response.json() == {"received": True, "event_id": stripe_evt["id"], "status": "queued"}

                failed = await wait_status(db, stripe_evt["id"], "failed")
                assert failed.attempts == 1 and "injected: the database went away" in (failed.last_error or "")
                assert failed.next_attempt_at is not None
                assert await count(db, Customer) == 0

                applied = await wait_status(db, stripe_evt["id"], "applied")
                assert applied.attempts == 2 and applied.last_error is None and applied.customer_id is not None
                assert await failing.left(db) == 0
                assert await count(db, Customer) == 1
                assert await count(db, CustomerLink) == 1
                assert await count(db, WebhookEvent) == 1
            finally:
                await failing.remove(db.engine)

    asyncio.run(scenario())


def test_deliveries_after_the_database_dropped_every_connection_are_stored_and_applied_once(
    module_db: DatabaseUnderTest,
) -> None:
    """PostgreSQL restarted (here: every connection of the app terminated) between two waves of deliveries. The
    batch that meets a dead connection is stored through a fresh one and applied by the retry sweep; every
    delivery is answered 200 and every event applied once."""
    if module_db.backend != "postgresql":
        pytest.skip("connections to terminate are PostgreSQL's")
    tenant = new_tenant(module_db, "http://flexsync.test")
    add_stripe_connection(module_db, tenant)
    settings = Settings(
        database_url=module_db.url,
        encryption_keys=TEST_ENCRYPTION_KEY,
        run_worker=False,
        webhook_retry_sweep_seconds=0.25,
    )
    app = create_app(settings)
    events = [stripe_event("customer.created", stripe_customer(name=f"Wave {n}")) for n in range(24)]

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            db: AppContext = app.state.db
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://flexsync.test"
            ) as client:

                async def deliver(event: dict[str, Any]) -> httpx.Response:
                    body = json.dumps(event).encode()
                    path = f"/v1/webhooks/stripe/{tenant.tenant_id}/{tenant.environment_id}"
                    return await client.post(path, content=body, headers={"Stripe-Signature": sign(body)})

                first = await asyncio.gather(*(deliver(e) for e in events[:8]))
                assert await drop_every_connection(module_db.url) > 0
                later = [await asyncio.gather(*(deliver(e) for e in events[n : n + 8])) for n in (8, 16)]

            responses = [*first, *later[0], *later[1]]
            assert [r.status_code for r in responses] == [200] * 24, [r.text for r in responses]
            # The wave right after meets a dead connection (unless a sweep opened a fresh one meanwhile): its
            # batch is answered `queued`, stored through another connection and applied by the retry sweep.
            assert {r.json()["status"] for r in responses} <= {"applied", "queued"}
            for stripe_evt in events:
                applied = await wait_status(db, stripe_evt["id"], "applied")
                assert applied.customer_id is not None and applied.attempts == 1
            async with db.sessions() as session:
                names = (
                    await session.execute(select(Customer.name).where(Customer.tenant_id == tenant.tenant_id))
                ).scalars()
                assert sorted(names) == sorted(f"Wave {n}" for n in range(24))

    asyncio.run(scenario())


def test_an_event_waiting_for_an_unreachable_stripe_is_failed_and_kept_for_a_retry(
    module_db: DatabaseUnderTest,
) -> None:
    """Two updates in one second need the customer's current state from Stripe; here Stripe cannot be
    reached (nothing listens on the configured API address), so the second update waits as a failed attempt."""
    tenant = new_tenant(module_db, "http://flexsync.test")
    add_stripe_connection(module_db, tenant)
    obj = stripe_customer(name="Before")
    now = int(time.time())
    created = stripe_event("customer.created", obj, created=now - 5)
    first = stripe_event("customer.updated", {**obj, "name": "First"}, created=now)
    second = stripe_event("customer.updated", {**obj, "name": "Second"}, created=now)
    settings = Settings(
        database_url=module_db.url,
        encryption_keys=TEST_ENCRYPTION_KEY,
        stripe_api_base=f"http://127.0.0.1:{free_port()}",
        stripe_timeout_seconds=2,
        run_worker=False,
    )
    app = create_app(settings)

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            db: AppContext = app.state.db
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://flexsync.test") as client:
                path = f"/v1/webhooks/stripe/{tenant.tenant_id}/{tenant.environment_id}"
                for event, status in ((created, "applied"), (first, "applied"), (second, "queued")):
                    body = json.dumps(event).encode()
                    response = await client.post(path, content=body, headers={"Stripe-Signature": sign(body)})
                    assert response.json()["status"] == status, response.text

            failed = await wait_status(db, second["id"], "failed")
            assert failed.attempts == 1 and failed.next_attempt_at is not None
            assert "APIConnectionError" in (failed.last_error or "")
            async with db.sessions() as session:
                names = (
                    (await session.execute(select(Customer.name).where(Customer.tenant_id == tenant.tenant_id)))
                    .scalars()
                    .all()
                )
            assert names == ["First"]

    asyncio.run(scenario())


def test_flexsync_worker_applies_events_a_stopped_server_left_queued(
    module_db: DatabaseUnderTest, tmp_path: Path
) -> None:
    """A server that stored an event and died before applying it leaves it queued; `flexsync worker` (its
    retry sweep) applies it once its recovery time has passed."""
    tenant = new_tenant(module_db, "http://flexsync.test")
    connection_id = add_stripe_connection(module_db, tenant)
    obj = stripe_customer(name="Left Behind")
    event = stripe_event("customer.created", obj)

    async def store(session: AsyncSession) -> None:
        session.add(
            WebhookEvent(
                id=new_id("whevt"),
                tenant_id=tenant.tenant_id,
                environment_id=tenant.environment_id,
                connection_id=connection_id,
                stripe_event_id=event["id"],
                type=event["type"],
                stripe_object_id=obj["id"],
                stripe_created=event["created"],
                livemode=False,
                payload=json.dumps(event),
                status="queued",
                attempts=0,
                next_attempt_at=utcnow() - timedelta(seconds=1),
            )
        )

    module_db.run(store)
    worker = start_worker(module_db, tmp_path)
    try:

        async def applied(session: AsyncSession) -> WebhookEvent | None:
            stored = (
                await session.execute(select(WebhookEvent).where(WebhookEvent.stripe_event_id == event["id"]))
            ).scalar_one()
            return stored if stored.status == "applied" else None

        stored = wait_for(lambda: module_db.run(applied), what="the worker to apply the event")
    finally:
        worker.stop()

    async def customers(session: AsyncSession) -> list[str]:
        found = await session.execute(select(Customer.name).where(Customer.tenant_id == tenant.tenant_id))
        return list(found.scalars().all())

    assert stored.attempts == 1 and stored.customer_id is not None
    assert module_db.run(customers) == ["Left Behind"]
