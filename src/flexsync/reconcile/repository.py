"""Every query of reconciliation: runs (scoped to a tenant and environment), their jobs, and the pages a run
walks through."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

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


async def links_with_customers(
    session: AsyncSession, connection_id: str, stripe_ids: Collection[str]
) -> list[tuple[CustomerLink, Customer]]:
    if not stripe_ids:
        return []
    stmt = (
        select(CustomerLink, Customer)
        .join(Customer, Customer.id == CustomerLink.customer_id)
        .where(CustomerLink.connection_id == connection_id, CustomerLink.stripe_customer_id.in_(stripe_ids))
    )
    return list((await session.execute(stmt)).tuples().all())


async def customers_with_unfinished_jobs(
    session: AsyncSession, customer_ids: Collection[str], kinds: Collection[str]
) -> set[str]:
    """Which of these customers have a pending or running job of one of these kinds."""
    if not customer_ids:
        return set()
    stmt = select(SyncJob.customer_id).where(
        SyncJob.customer_id.in_(customer_ids), SyncJob.status.in_(UNFINISHED_JOB), SyncJob.kind.in_(kinds)
    )
    return {customer_id for customer_id in (await session.execute(stmt)).scalars() if customer_id is not None}


async def unlinked_customers(
    session: AsyncSession, tenant_id: str, environment_id: str, connection_id: str, after: str | None, limit: int
) -> list[Customer]:
    """The environment's next published customers, by id after `after` (keyset), with no link of this connection
    (a link that Stripe's deletion left behind counts: such a customer is not created in Stripe again)."""
    linked = exists().where(CustomerLink.connection_id == connection_id, CustomerLink.customer_id == Customer.id)
    stmt = select(Customer).where(
        Customer.tenant_id == tenant_id,
        Customer.environment_id == environment_id,
        Customer.status == "published",
        ~linked,
    )
    if after is not None:
        stmt = stmt.where(Customer.id > after)
    return list((await session.execute(stmt.order_by(Customer.id).limit(limit))).scalars().all())
