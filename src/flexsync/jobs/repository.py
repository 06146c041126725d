"""Every sync-job query: claiming with leases, lease upkeep, per-customer lookups, and the scoped job list."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from flexsync.models import SyncJob
from flexsync.tenancy.service import Scope

JOB_STATUSES = ("pending", "running", "succeeded", "failed")
UNFINISHED = ("pending", "running")


async def claim(
    session: AsyncSession, worker_id: str, limit: int, lease_seconds: float, now: datetime
) -> list[SyncJob]:
    """Take up to `limit` due jobs for `worker_id`, leased until now + lease_seconds.

    Due: pending with run_at reached, or running under an expired lease (its worker died). A job is only
    claimable when no other job of its customer is ahead of it (older and unfinished) or running under a live
    lease, so one customer's jobs run one at a time, in order. On PostgreSQL, `FOR UPDATE SKIP LOCKED` lets
    concurrent workers claim disjoint jobs without waiting for each other; SQLite has a single writer.
    """
    other = aliased(SyncJob)
    due = or_(
        and_(SyncJob.status == "pending", SyncJob.run_at <= now),
        and_(SyncJob.status == "running", SyncJob.locked_until < now),
    )
    blocked = (
        exists()
        .where(other.customer_id == SyncJob.customer_id, other.id != SyncJob.id)
        .where(
            or_(
                and_(other.status == "running", other.locked_until >= now),
                and_(
                    other.status.in_(UNFINISHED),
                    or_(
                        other.created_at < SyncJob.created_at,
                        and_(other.created_at == SyncJob.created_at, other.id < SyncJob.id),
                    ),
                ),
            )
        )
    )
    candidates = (
        select(SyncJob.id)
        .where(due, ~blocked)
        .order_by(SyncJob.run_at, SyncJob.created_at)
        .limit(limit)
        .with_for_update(of=SyncJob, skip_locked=True)
    )
    ids = list((await session.execute(candidates)).scalars().all())
    if not ids:
        return []
    claimed = await session.execute(
        update(SyncJob)
        .where(SyncJob.id.in_(ids))
        .values(
            status="running",
            locked_by=worker_id,
            locked_until=now + timedelta(seconds=lease_seconds),
            attempts=SyncJob.attempts + 1,
            updated_at=now,
        )
        .returning(SyncJob),
        execution_options={"synchronize_session": False},
    )
    return list(claimed.scalars().all())


async def extend_leases(session: AsyncSession, worker_id: str, job_ids: Sequence[str], locked_until: datetime) -> None:
    """Heartbeat: a live worker keeps its running jobs from being taken over."""
    await session.execute(
        update(SyncJob)
        .where(SyncJob.id.in_(job_ids), SyncJob.locked_by == worker_id, SyncJob.status == "running")
        .values(locked_until=locked_until),
        execution_options={"synchronize_session": False},
    )


async def release(session: AsyncSession, worker_id: str, job_ids: Sequence[str], now: datetime) -> None:
    """Hand unfinished jobs back at shutdown, so another worker need not wait for their leases to expire."""
    await session.execute(
        update(SyncJob)
        .where(SyncJob.id.in_(job_ids), SyncJob.locked_by == worker_id, SyncJob.status == "running")
        .values(status="pending", locked_by=None, locked_until=None, run_at=now, updated_at=now),
        execution_options={"synchronize_session": False},
    )


async def get_held(session: AsyncSession, job_id: str, worker_id: str) -> SyncJob | None:
    """The job, locked, if this worker still holds it (its lease was not taken over)."""
    stmt = (
        select(SyncJob)
        .where(SyncJob.id == job_id, SyncJob.locked_by == worker_id, SyncJob.status == "running")
        .with_for_update()
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def save_request(session: AsyncSession, job_id: str, payload: dict[str, Any], idempotency_key: str) -> None:
    """Keep the request a job is about to send, so each retry sends the very same one."""
    await session.execute(
        update(SyncJob).where(SyncJob.id == job_id).values(payload=payload, idempotency_key=idempotency_key),
        execution_options={"synchronize_session": False},
    )


async def coalesce_updates(
    session: AsyncSession, customer_id: str, up_to_version: int, into_job_id: str, now: datetime
) -> None:
    """Finish the customer's pending update jobs for versions up to one whose state was just pushed."""
    await session.execute(
        update(SyncJob)
        .where(
            SyncJob.customer_id == customer_id,
            SyncJob.kind == "update",
            SyncJob.status == "pending",
            SyncJob.payload["version"].as_integer() <= up_to_version,
        )
        .values(
            status="succeeded",
            result={"coalesced_into": into_job_id},
            last_error=None,
            finished_at=now,
            updated_at=now,
        ),
        execution_options={"synchronize_session": False},
    )


async def unfinished_for_customer(
    session: AsyncSession, customer_id: str, kinds: Sequence[str] | None = None
) -> list[SyncJob]:
    """The customer's pending and running jobs, oldest first."""
    return (await unfinished_for_customers(session, [customer_id], kinds)).get(customer_id, [])


async def unfinished_for_customers(
    session: AsyncSession, customer_ids: Sequence[str], kinds: Sequence[str] | None = None
) -> dict[str, list[SyncJob]]:
    """Pending and running jobs of many customers, oldest first, by customer id."""
    stmt = select(SyncJob).where(SyncJob.customer_id.in_(customer_ids), SyncJob.status.in_(UNFINISHED))
    if kinds is not None:
        stmt = stmt.where(SyncJob.kind.in_(kinds))
    found: dict[str, list[SyncJob]] = {}
    for job in (await session.execute(stmt.order_by(SyncJob.created_at, SyncJob.id))).scalars():
        found.setdefault(str(job.customer_id), []).append(job)
    return found


async def latest_outcomes(session: AsyncSession, customer_ids: Sequence[str]) -> dict[str, SyncJob]:
    """Each customer's most recent job that succeeded or has an error (running or retrying jobs included)."""
    ranked = (
        select(
            SyncJob.id,
            func.row_number()
            .over(partition_by=SyncJob.customer_id, order_by=(SyncJob.updated_at.desc(), SyncJob.id.desc()))
            .label("rank"),
        )
        .where(
            SyncJob.customer_id.in_(customer_ids),
            or_(SyncJob.status == "succeeded", SyncJob.last_error.is_not(None)),
        )
        .subquery()
    )
    stmt = select(SyncJob).join(ranked, ranked.c.id == SyncJob.id).where(ranked.c.rank == 1)
    return {str(job.customer_id): job for job in (await session.execute(stmt)).scalars()}


async def get(session: AsyncSession, scope: Scope, job_id: str, *, for_update: bool = False) -> SyncJob | None:
    stmt = select(SyncJob).where(
        SyncJob.id == job_id,
        SyncJob.tenant_id == scope.tenant_id,
        SyncJob.environment_id == scope.environment_id,
    )
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_page(
    session: AsyncSession,
    scope: Scope,
    *,
    status: str | None,
    customer_id: str | None,
    limit: int,
    offset: int,
) -> tuple[list[SyncJob], int]:
    stmt = select(SyncJob).where(SyncJob.tenant_id == scope.tenant_id, SyncJob.environment_id == scope.environment_id)
    if status is not None:
        stmt = stmt.where(SyncJob.status == status)
    if customer_id is not None:
        stmt = stmt.where(SyncJob.customer_id == customer_id)
    total = (await session.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
    ordered = stmt.order_by(SyncJob.created_at.desc(), SyncJob.id.desc()).limit(limit).offset(offset)
    return list((await session.execute(ordered)).scalars().all()), total
