"""What a sync job's first step decides from the job's connection, customer and link (read in one query), on
SQLite and PostgreSQL: the job fails with a message the job list shows, or it becomes a create or an update.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.config import Settings
from flexsync.crypto import SecretBox
from flexsync.ids import new_id
from flexsync.models import Customer, CustomerLink, StripeConnection, SyncJob, utcnow
from flexsync.sync import links, outbound
from tests.support import TEST_ENCRYPTION_KEY, DatabaseUnderTest, customer_row, new_tenant
from tests.webhook_support import add_stripe_connection

BOX = SecretBox([TEST_ENCRYPTION_KEY])


def decide(db: DatabaseUnderTest, *, customer_id: str | None, connection_id: str | None) -> Any:
    """`prepare` for a create job of this customer on this connection: the Push or the JobFailed message."""

    async def work(session: AsyncSession) -> Any:
        job = SyncJob(
            id=new_id("job"),
            tenant_id="t",
            environment_id="e",
            connection_id=connection_id,
            customer_id=customer_id,
            kind="create",
            idempotency_key=new_id("key"),
            payload={},
        )
        settings = Settings(database_url=db.url, encryption_keys=TEST_ENCRYPTION_KEY)
        try:
            return await outbound.prepare(session, job, BOX, settings)
        except outbound.JobFailed as failed:
            return str(failed)

    return db.run(work)


def test_prepare_reads_the_jobs_connection_customer_and_link(fresh_db: DatabaseUnderTest) -> None:
    tenant = new_tenant(fresh_db, base_url="")
    connection_id = add_stripe_connection(fresh_db, tenant)
    row = customer_row(tenant, "Ada Lovelace")
    customer_id = row.id

    async def add_customer(session: AsyncSession) -> None:
        session.add(row)

    fresh_db.run(add_customer)

    # Not linked: a create, with the customer's fields.
    push = decide(fresh_db, customer_id=customer_id, connection_id=connection_id)
    assert (push.action, push.params["name"], push.account.connection_id) == ("create", "Ada Lovelace", connection_id)

    async def link(session: AsyncSession) -> None:
        customer = await session.get(Customer, customer_id)
        assert customer is not None
        await links.link(session, connection_id, customer, "cus_ada")

    fresh_db.run(link)
    # Linked (by the echoed webhook, say): the create becomes an update of that Stripe customer.
    push = decide(fresh_db, customer_id=customer_id, connection_id=connection_id)
    assert (push.action, push.stripe_customer_id) == ("update", "cus_ada")

    async def mark_link_deleted(session: AsyncSession) -> None:
        await session.execute(update(CustomerLink).values(status="deleted"))

    fresh_db.run(mark_link_deleted)
    # A link that only remembers a Stripe customer deleted in Stripe: a new Stripe customer is created.
    assert decide(fresh_db, customer_id=customer_id, connection_id=connection_id).action == "create"

    missing = new_id("cust")
    assert decide(fresh_db, customer_id=missing, connection_id=connection_id) == f"customer {missing} no longer exists"

    async def set_connection(session: AsyncSession, **values: Any) -> None:
        await session.execute(update(StripeConnection).where(StripeConnection.id == connection_id).values(**values))

    fresh_db.run(lambda session: set_connection(session, status="disabled"))
    assert decide(fresh_db, customer_id=customer_id, connection_id=connection_id) == "the Stripe connection is disabled"
    fresh_db.run(lambda session: set_connection(session, deleted_at=utcnow()))
    deleted = "the environment's Stripe connection was deleted"
    assert decide(fresh_db, customer_id=customer_id, connection_id=connection_id) == deleted
    assert decide(fresh_db, customer_id=customer_id, connection_id=new_id("conn")) == deleted
    assert decide(fresh_db, customer_id=customer_id, connection_id=None) == deleted
