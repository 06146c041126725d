"""The queries reconciliation's decisions (sync/reconcile.py) make of the pages a run walks through."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import String, bindparam, func, select, true, tuple_
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.db import execute_planned_for_values
from flexsync.jobs.repository import UNFINISHED
from flexsync.models import Customer, CustomerLink, SyncJob


def _hits(session: AsyncSession, keys: Collection[str], key: Any, row_id: Any, *conditions: Any) -> Any:
    """The `row_id` of one row per key whose `key` column equals it (and that meets `conditions`).

    PostgreSQL: a LATERAL lookup per key, which only an index lookup serves, however stale the table's statistics
    are (a young table has none, and a plain `IN` then tends to scan every row of the connection per page, which
    makes a pass quadratic); the same idiom as the webhook path's probe (sync/inbound.py). Run it with
    db.execute_planned_for_values, so that no generic plan replaces the one made for the keys."""
    if session.get_bind().dialect.name != "postgresql":
        return select(row_id).where(key.in_(sorted(keys)), *conditions)
    wanted = func.unnest(bindparam(None, sorted(keys), type_=ARRAY(String))).table_valued("key")
    wanted = wanted.render_derived(name="wanted")
    hit = select(row_id.label("row_id")).where(key == wanted.c.key, *conditions).limit(1).lateral("hit")
    return select(hit.c.row_id).select_from(wanted.join(hit, true()))


async def links_with_customers(
    session: AsyncSession, connection_id: str, stripe_ids: Collection[str]
) -> list[tuple[CustomerLink, Customer]]:
    if not stripe_ids:
        return []
    link_ids = _hits(
        session,
        stripe_ids,
        CustomerLink.stripe_customer_id,
        CustomerLink.id,
        CustomerLink.connection_id == connection_id,
    )
    stmt = (
        select(CustomerLink, Customer)
        .join(Customer, Customer.id == CustomerLink.customer_id)
        .where(CustomerLink.id.in_(list((await execute_planned_for_values(session, link_ids)).scalars())))
    )
    return [(link, customer) for link, customer in await session.execute(stmt)]


async def linked_customer_ids(session: AsyncSession, connection_id: str, customer_ids: Collection[str]) -> set[str]:
    """Which of these customers have a link of this connection (one that Stripe's deletion left behind counts)."""
    if not customer_ids:
        return set()
    stmt = _hits(
        session,
        customer_ids,
        CustomerLink.customer_id,
        CustomerLink.customer_id,
        CustomerLink.connection_id == connection_id,
    )
    return set((await execute_planned_for_values(session, stmt)).scalars())


async def customers_with_unfinished_jobs(
    session: AsyncSession, customer_ids: Collection[str], kinds: Collection[str]
) -> set[str]:
    """Which of these customers have a pending or running job of one of these kinds."""
    if not customer_ids:
        return set()
    stmt = _hits(
        session,
        customer_ids,
        SyncJob.customer_id,
        SyncJob.customer_id,
        SyncJob.status.in_(UNFINISHED),
        SyncJob.kind.in_(kinds),
    )
    return set((await execute_planned_for_values(session, stmt)).scalars())


async def published_customers_after(
    session: AsyncSession, tenant_id: str, environment_id: str, after: str | None, limit: int
) -> list[Customer]:
    """The environment's next published customers in the order they were created, after the customer `after`:
    keyset pagination on (created_at, id), which ix_customers_env_created serves."""
    stmt = select(Customer).where(
        Customer.tenant_id == tenant_id, Customer.environment_id == environment_id, Customer.status == "published"
    )
    if after is not None:
        since = (await session.execute(select(Customer.created_at).where(Customer.id == after))).scalar_one()
        stmt = stmt.where(Customer.created_at >= since, tuple_(Customer.created_at, Customer.id) > (since, after))
    ordered = stmt.order_by(Customer.created_at, Customer.id).limit(limit)
    return list((await session.execute(ordered)).scalars().all())
