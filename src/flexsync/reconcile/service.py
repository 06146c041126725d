"""Reconciliation runs: start one (or resume the connection's unfinished one), find and show them. Never commits.

A run is carried out by its sync job (kind `reconcile`): by a worker when started through the API, or in the
foreground by `flexsync reconcile`, which leases the job to itself. At most one run per connection is queued
or running at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.ids import new_id
from flexsync.jobs import outbox
from flexsync.jobs.service import fail
from flexsync.kit.errors import AlreadyExists, NotFound, ValidationFailed
from flexsync.models import Reconciliation, StripeConnection, SyncJob, utcnow
from flexsync.reconcile import repository
from flexsync.sync.reconcile import COUNT_KEYS, Direction
from flexsync.tenancy.service import Scope

JOB_KIND = "reconcile"


def run_to_dict(run: Reconciliation) -> dict[str, Any]:
    """A run as the API shows it: where it stands (`progress`) and its report (`counts`, `conflicts`)."""
    counts = run.counts or {}
    return {
        "id": run.id,
        "connection_id": run.connection_id,
        "direction": run.direction,
        "dry_run": run.dry_run,
        "status": run.status,
        "progress": {"phase": run.phase, "cursor": run.cursor, "processed": run.processed},
        "counts": {key: int(counts.get(key, 0)) for key in COUNT_KEYS},
        "conflicts": list(run.conflicts or []),
        "error": run.error,
        "job_id": run.job_id,
        "tenant_id": run.tenant_id,
        "environment_id": run.environment_id,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "finished_at": run.finished_at,
    }


async def find(session: AsyncSession, scope: Scope, run_id: str) -> Reconciliation:
    run = await repository.get(session, scope, run_id)
    if run is None:
        raise NotFound(f"reconciliation {run_id} not found")
    return run


@dataclass(frozen=True, slots=True)
class Started:
    run: Reconciliation
    job: SyncJob
    # An unfinished run picked up where it stopped, rather than a new one.
    resumed: bool


async def start(
    session: AsyncSession,
    connection: StripeConnection,
    *,
    direction: Direction,
    dry_run: bool,
    restart: bool = False,
    holder: str | None = None,
    lease_seconds: float = 30.0,
) -> Started:
    """Start a run on `connection` (locked by the caller), or resume its unfinished one.

    The connection's latest run, unless it succeeded:
    - queued (its job waits for a worker) or running under a live lease: AlreadyExists (409); except that a
      `holder` takes over a queued run that has the same options;
    - failed, or left running by a process that died (its lease ran out): resumed from its cursor when asked
      for with the same direction and dry_run and without `restart`; otherwise closed, and a new run starts.
    With `holder` (`flexsync reconcile`, which runs it in the foreground) the run's job is leased to the
    holder; otherwise it is queued for the workers.
    """
    if connection.status != "active":
        raise ValidationFailed(f"the Stripe connection {connection.id} is {connection.status}: enable it first")
    now = utcnow()
    latest = await repository.latest_for_connection(session, connection.id)
    job = await session.get(SyncJob, latest.job_id) if latest is not None and latest.job_id else None
    if latest is not None and job is not None and latest.status != "succeeded":
        same = latest.direction == direction and latest.dry_run == dry_run and not restart
        queued = job.status == "pending"
        live = job.status == "running" and job.locked_until is not None and job.locked_until >= now
        if live or (queued and not (holder is not None and same)):
            state = "running" if live else "queued"
            raise AlreadyExists(
                f"reconciliation {latest.id} is {state} on this connection: wait for it to finish",
                {"reconciliation_id": latest.id, "status": latest.status},
            )
        if same:
            await _take_or_queue(session, latest, job, holder, lease_seconds, now)
            return Started(latest, job, resumed=True)
        _close(latest, job, now)
    run = Reconciliation(
        id=new_id("recon"),
        tenant_id=connection.tenant_id,
        environment_id=connection.environment_id,
        connection_id=connection.id,
        direction=direction,
        dry_run=dry_run,
        status="pending",
        phase="stripe",
        cursor=None,
        processed=0,
        counts={key: 0 for key in COUNT_KEYS},
        conflicts=[],
        created_at=now,
        updated_at=now,
    )
    session.add(run)
    job = await outbox.enqueue(
        session,
        kind=JOB_KIND,
        tenant_id=connection.tenant_id,
        environment_id=connection.environment_id,
        connection_id=connection.id,
        customer_id=None,
        payload={"reconciliation_id": run.id},
        idempotency_key=f"reconcile:{run.id}",
    )
    run.job_id = job.id
    if holder is not None:
        await _take_or_queue(session, run, job, holder, lease_seconds, now)
    await session.flush()
    return Started(run, job, resumed=False)


async def _take_or_queue(
    session: AsyncSession,
    run: Reconciliation,
    job: SyncJob,
    holder: str | None,
    lease_seconds: float,
    now: datetime,
) -> None:
    run.status = "pending"
    run.finished_at = None
    run.updated_at = now
    if holder is not None:
        if await repository.take_job(session, job.id, holder, lease_seconds, now) is None:
            raise AlreadyExists(f"reconciliation {run.id} was taken over meanwhile", {"reconciliation_id": run.id})
        await session.refresh(job)
        return
    job.status = "pending"
    job.attempts = 0
    job.run_at = now
    job.locked_by = None
    job.locked_until = None
    job.finished_at = None
    job.updated_at = now
    await session.flush()
    await outbox.wake_workers_on_commit(session)


def _close(run: Reconciliation, job: SyncJob, now: datetime) -> None:
    """A run that will not be resumed, because a new one starts instead."""
    message = "not finished; a newer reconciliation replaced it"
    if job.status in ("pending", "running"):
        fail(job, message, now)
    if run.status != "failed":
        run.status = "failed"
        run.error = run.error or message
        run.finished_at = now
        run.updated_at = now


async def start_for_catch_up_gap(session: AsyncSession, connection: StripeConnection) -> str:
    """A from-Stripe reconciliation of the connection (locked by the caller), which catch-up starts when it
    finds a gap (`on_catch_up_gap: reconcile`); the connection's queued or running one if it has one."""
    try:
        started = await start(session, connection, direction="from-stripe", dry_run=False)
    except AlreadyExists as exc:
        return str(exc.details["reconciliation_id"])
    return started.run.id
