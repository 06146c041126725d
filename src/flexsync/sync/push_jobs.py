"""Outbound jobs as the worker runs them: prepare the push in one transaction, send it to Stripe outside any,
record the result in another (sync/outbound.py decides each step). Registered with the worker (`register`)."""

from __future__ import annotations

from typing import get_args

import structlog

from flexsync.jobs import repository
from flexsync.jobs.registry import Registry, WorkerContext
from flexsync.jobs.service import succeed
from flexsync.metrics import SYNC_JOBS
from flexsync.models import SyncJob, utcnow
from flexsync.stripe.calls import StripeCallFailed
from flexsync.sync import outbound

log = structlog.get_logger(__name__)


async def run_push(work: WorkerContext, job: SyncJob) -> None:
    db = work.ctx
    if job.attempts > job.max_attempts:
        message = f"gave up after {job.max_attempts} attempts (last error: {job.last_error})"
        await work.retry_or_fail(job, message, False)
        return
    try:
        async with db.transaction() as session:
            plan = await outbound.prepare(session, job, db.box, db.settings)
        if isinstance(plan, outbound.NothingToDo):
            async with db.transaction() as session:
                held = await repository.get_held(session, job.id, work.holder)
                if held is not None:
                    succeed(held, plan.result, utcnow())
            SYNC_JOBS.labels(job.kind, "skipped").inc()
            return
        pushed = await outbound.send(plan, work.caller)
        async with db.transaction() as session:
            held = await repository.get_held(session, job.id, work.holder)
            if held is None:
                log.warning("job lease was taken over before its result was recorded", job_id=job.id)
                return
            result = await outbound.record(session, plan, pushed, held)
        SYNC_JOBS.labels(job.kind, "succeeded").inc()
        log.info("sync job succeeded", job_id=job.id, kind=job.kind, customer_id=job.customer_id, **result)
    except StripeCallFailed as failure:
        await work.retry_or_fail(job, failure.message, failure.retryable)
    except outbound.JobFailed as failure:
        await work.retry_or_fail(job, failure.message, False)


def register(registry: Registry) -> None:
    for kind in get_args(outbound.Action):
        registry.job_kind(kind, run_push, note_failure=outbound.note_failure)
