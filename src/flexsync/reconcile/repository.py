"""Every query of reconciliation: runs (scoped to a tenant and environment), their jobs, and the pages a run
walks through."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, bindparam, func, or_, select, true, tuple_, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.db import execute_planned_for_values
from flexsync.models import Customer, CustomerLink, Reconciliation, SyncJob
from flexsync.tenancy.service import Scope

UNFINISHED_JOB = ("pending", "running")


async def get(session: AsyncSession, scope: Scope, run_id: str) -> Reconciliation | None:
    stmt = select(Reconciliation).where(
        Reconciliation.id == run_id,
        Reconciliation.tenant_id == scope.tenant_id,
        Reconciliation.environment_id == scope.environment_id,
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_page(
    session: AsyncSession,
    scope: Scope,
    *,
    connection_id: str | None,
    status: str | None,
    limit: int,
    offset: int,
) -> tuple[list[Reconciliation], int]:
    stmt = select(Reconciliation).where(
        Reconciliation.tenant_id == scope.tenant_id, Reconciliation.environment_id == scope.environment_id
    )
    if connection_id is not None:
        stmt = stmt.where(Reconciliation.connection_id == connection_id)
    if status is not None:
        stmt = stmt.where(Reconciliation.status == status)
    total = (await session.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
    ordered = stmt.order_by(Reconciliation.created_at.desc(), Reconciliation.id.desc()).limit(limit).offset(offset)
    return list((await session.execute(ordered)).scalars().all()), total


async def latest_for_connection(session: AsyncSession, connection_id: str) -> Reconciliation | None:
    stmt = (
        select(Reconciliation)
        .where(Reconciliation.connection_id == connection_id)
        .order_by(Reconciliation.created_at.desc(), Reconciliation.id.desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def locked(session: AsyncSession, run_id: str) -> Reconciliation:
    stmt = select(Reconciliation).where(Reconciliation.id == run_id).with_for_update()
    return (await session.execute(stmt)).scalar_one()


async def take_job(
    session: AsyncSession, job_id: str, holder: str, lease_seconds: float, now: datetime
) -> SyncJob | None:
    """Lease one job to `holder` unless someone holds it: pending, failed, or running under an expired lease.

    The conditional update settles a race with a worker claiming the same job: one of them gets it."""
    taken = await session.execute(
        update(SyncJob)
        .where(
            SyncJob.id == job_id,
            or_(
                SyncJob.status.in_(("pending", "failed")),
                and_(SyncJob.status == "running", SyncJob.locked_until < now),
            ),
        )
        .values(
            status="running",
            locked_by=holder,
            locked_until=now + timedelta(seconds=lease_seconds),
            attempts=SyncJob.attempts + 1,
            finished_at=None,
            updated_at=now,
        )
        .returning(SyncJob),
        execution_options={"synchronize_session": False},
    )
    return taken.scalar_one_or_none()


def _hits(session: AsyncSession, keys: Collection[str], key: Any, row_id: Any, *conditions: Any) -> Any:
    """The `row_id` of one row per key whose `key` column equals it (and that meets `conditions`).

    PostgreSQL: a LATERAL lookup per key, which only an index lookup serves, however stale the table's statistics
    are (a young table has none, and a plain `IN` then tends to scan every row of the connection per page, which
    makes a pass quadratic); the same idiom as the webhook path's probe (stripe/inbound.py). Run it with
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
        SyncJob.status.in_(UNFINISHED_JOB),
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
