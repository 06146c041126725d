"""The transactional outbox: a sync job is a row written in the caller's transaction, next to the change it
describes. If that transaction commits the job exists; if it rolls back there is no job. No broker needed.

Workers are told about new jobs without polling: on PostgreSQL a NOTIFY sent in the same transaction (delivered
only on commit) wakes every listening worker; in this process, workers registered with `on_commit_wake` are
woken right after the commit (how the embedded worker hears of jobs on SQLite, which has no NOTIFY).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from flexsync.config import get_settings
from flexsync.ids import new_id
from flexsync.models import SyncJob, utcnow

NOTIFY_CHANNEL = "flexsync_sync_jobs"
_WAKE_FLAG = "flexsync_wake_workers_after_commit"
_local_wakers: set[Callable[[], None]] = set()


def on_commit_wake(waker: Callable[[], None]) -> Callable[[], None]:
    """Call `waker` after every commit in this process that wrote a job; returns the function that stops it."""
    _local_wakers.add(waker)
    return lambda: _local_wakers.discard(waker)


def _wake_local_workers(session: Session) -> None:
    session.info.pop(_WAKE_FLAG, None)
    for waker in list(_local_wakers):
        waker()


async def wake_workers_on_commit(session: AsyncSession) -> None:
    """Make the current transaction, when it commits, wake the workers (this process's and, via NOTIFY, others)."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})
    sync_session = session.sync_session
    if not sync_session.info.get(_WAKE_FLAG):
        sync_session.info[_WAKE_FLAG] = True
        event.listen(sync_session, "after_commit", _wake_local_workers, once=True)


async def enqueue(
    session: AsyncSession,
    *,
    kind: str,
    tenant_id: str,
    environment_id: str,
    connection_id: str,
    customer_id: str | None,
    payload: dict[str, Any],
    idempotency_key: str,
) -> SyncJob:
    now = utcnow()
    job = SyncJob(
        id=new_id("job"),
        tenant_id=tenant_id,
        environment_id=environment_id,
        connection_id=connection_id,
        customer_id=customer_id,
        kind=kind,
        status="pending",
        attempts=0,
        max_attempts=get_settings().job_max_attempts,
        payload=payload,
        idempotency_key=idempotency_key,
        run_at=now,
        result={},
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    await session.flush()
    await wake_workers_on_commit(session)
    return job
