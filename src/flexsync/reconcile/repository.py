"""The queries of reconciliation runs (scoped to a tenant and environment) and their jobs; the pages a run walks
through are read by sync/repository.py."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.models import Reconciliation, SyncJob
from flexsync.tenancy.service import Scope


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
