"""A sync job's life: pending -> running -> succeeded | failed, with retries in between. Never commits."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.jobs import outbox, repository
from flexsync.kit.errors import NotFound, ValidationFailed
from flexsync.models import SyncJob, utcnow
from flexsync.tenancy.service import Scope


def job_to_dict(job: SyncJob) -> dict[str, Any]:
    """A job as the API shows it. `run_at` is when a pending job runs next (its retry time after a failure)."""
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "customer_id": job.customer_id,
        "connection_id": job.connection_id,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "run_at": job.run_at,
        "last_error": job.last_error,
        "result": dict(job.result or {}),
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "finished_at": job.finished_at,
    }


def _unlock(job: SyncJob, now: datetime) -> None:
    job.locked_by = None
    job.locked_until = None
    job.updated_at = now


def succeed(job: SyncJob, result: dict[str, Any], now: datetime) -> None:
    job.status = "succeeded"
    job.result = result
    job.last_error = None
    job.finished_at = now
    _unlock(job, now)


def fail(job: SyncJob, message: str, now: datetime) -> None:
    job.status = "failed"
    job.last_error = message
    job.finished_at = now
    _unlock(job, now)


def retry_later(job: SyncJob, message: str, delay_seconds: float, now: datetime) -> None:
    job.status = "pending"
    job.last_error = message
    job.run_at = now + timedelta(seconds=delay_seconds)
    _unlock(job, now)


async def retry_failed(session: AsyncSession, scope: Scope, job_id: str) -> SyncJob:
    """Run a failed job again now, as the same operation (a create reuses its request and Idempotency-Key).

    To push the customer's current state instead, ask for a new sync (`POST /v1/customers/{id}/sync-to-stripe`).
    """
    job = await repository.get(session, scope, job_id, for_update=True)
    if job is None:
        raise NotFound(f"sync job {job_id} not found")
    if job.status != "failed":
        raise ValidationFailed(
            f"only a failed job can be retried; sync job {job_id} is {job.status}", {"status": job.status}
        )
    now = utcnow()
    job.status = "pending"
    job.attempts = 0
    job.run_at = now
    job.finished_at = None
    _unlock(job, now)
    await session.flush()
    await outbox.wake_workers_on_commit(session)
    return job
