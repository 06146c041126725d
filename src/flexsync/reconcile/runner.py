"""Carrying out a reconciliation run: its `reconcile` job, run by a worker or in the foreground by the CLI.

Stripe is called outside any transaction, and the next page is fetched while the current one is written. Each
page is one transaction that checks the job is still leased to this process, writes the page's decisions
(sync/reconcile.py) and moves the run's cursor, so a run stopped anywhere (a killed process, Stripe failing
past its retries) continues after its last written page. A dry run's page is decided in a transaction that is
rolled back; only the run's report and cursor are written.

A failed page stops the run: `pending` again when a worker will retry it (with backoff, up to the job's
max_attempts), else `failed` until someone asks for it again (reconcile/service.py resumes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import socket
from collections.abc import Awaitable, Callable

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.config import Settings
from flexsync.connections.accounts import stripe_account
from flexsync.context import AppContext, open_context
from flexsync.jobs import repository as jobs
from flexsync.jobs.leases import keep_leases
from flexsync.jobs.registry import Registry, WorkerContext
from flexsync.jobs.service import fail, retry_later, succeed
from flexsync.kit.errors import APIError, NotFound
from flexsync.metrics import SYNC_JOBS
from flexsync.models import Reconciliation, StripeConnection, SyncJob, utcnow
from flexsync.reconcile import repository, service
from flexsync.stripe.calls import StripeAccount, StripeCaller, StripeCallFailed, stripe_call_backoff
from flexsync.sync.reconcile import (
    COUNT_KEYS,
    MAX_REPORTED_CONFLICTS,
    Direction,
    PageResult,
    Reconciler,
    StripePage,
    list_stripe_page,
    next_phase,
)

log = structlog.get_logger(__name__)

Progress = Callable[[Reconciliation], None]
PageWork = Callable[[AsyncSession], Awaitable[PageResult]]


class LeaseLost(Exception):
    """Another process took the run's job over (this one was presumed dead): stop without writing."""


async def run_job(
    db: AppContext,
    job: SyncJob,
    caller: StripeCaller,
    holder: str,
    *,
    retry: bool,
    on_progress: Progress | None = None,
) -> Reconciliation | None:
    """Carry out the run of a `reconcile` job leased to `holder`; returns the run as it ended (None if the job
    was taken over). The run's own failures are recorded on it and its job, never raised; with `retry` a
    failure Stripe may get over leaves the job to be retried later."""
    run_id = str((job.payload or {})["reconciliation_id"])
    try:
        run, connection = await _begin(db, job.id, run_id, holder)
        if connection is None:
            return run
        reconciler = Reconciler(
            connection,
            run_id=run.id,
            direction=run.direction,
            dry_run=run.dry_run,
            conflicted_customers={cid for conflict in run.conflicts or [] for cid in conflict["customer_ids"]},
        )
        if run.phase == "stripe":
            account = stripe_account(connection, db.box, db.settings)
            run = await _stripe_pass(db, job.id, holder, run, reconciler, caller, account, on_progress)
        while run.phase == "customers":
            work = functools.partial(reconciler.push_customers_page, after=run.cursor)
            run = await _page(db, job.id, holder, run, work)
            if on_progress is not None:
                on_progress(run)
        return await _finish(db, job.id, holder, run.id)
    except LeaseLost:
        log.warning("reconciliation taken over by another process", reconciliation_id=run_id, holder=holder)
        return None
    except StripeCallFailed as failure:
        return await _stop(db, job.id, holder, run_id, failure.message, retryable=retry and failure.retryable)
    except APIError as exc:
        return await _stop(db, job.id, holder, run_id, exc.message, retryable=False)
    except Exception as exc:
        log.exception("reconciliation crashed", reconciliation_id=run_id)
        return await _stop(db, job.id, holder, run_id, f"internal error ({type(exc).__name__})", retryable=retry)


async def _held(session: AsyncSession, job_id: str, holder: str) -> SyncJob:
    held = await jobs.get_held(session, job_id, holder)
    if held is None:
        raise LeaseLost(job_id)
    return held


async def _begin(
    db: AppContext, job_id: str, run_id: str, holder: str
) -> tuple[Reconciliation, StripeConnection | None]:
    """Mark the run running; the connection to reconcile, or None when the run cannot go on (it is failed)."""
    now = utcnow()
    async with db.transaction() as session:
        held = await _held(session, job_id, holder)
        run = await repository.locked(session, run_id)
        connection = await session.get(StripeConnection, run.connection_id)
        problem = None
        if connection is None or connection.deleted_at is not None:
            problem = "the Stripe connection was deleted"
        elif connection.status != "active":
            problem = f"the Stripe connection is {connection.status}"
        elif held.attempts > held.max_attempts:
            problem = f"gave up after {held.max_attempts} attempts (last error: {held.last_error})"
        if problem is not None:
            fail(held, problem, now)
            run.status, run.error, run.finished_at, run.updated_at = "failed", problem, now, now
            return run, None
        if run.dry_run and (run.phase != "stripe" or run.cursor is not None):
            # A dry run's memory of its earlier pages died with the process that ran them: start it over.
            run.phase, run.cursor, run.processed, run.conflicts = "stripe", None, 0, []
            run.counts = {key: 0 for key in COUNT_KEYS}
        run.status, run.error, run.finished_at, run.updated_at = "running", None, None, now
        return run, connection


async def _stripe_pass(
    db: AppContext,
    job_id: str,
    holder: str,
    run: Reconciliation,
    reconciler: Reconciler,
    caller: StripeCaller,
    account: StripeAccount,
    on_progress: Progress | None,
) -> Reconciliation:
    def fetch(after: str | None) -> asyncio.Task[StripePage]:
        return asyncio.create_task(list_stripe_page(caller, account, after))

    upcoming: asyncio.Task[StripePage] | None = fetch(run.cursor)
    try:
        while upcoming is not None:
            page = await upcoming
            upcoming = fetch(page.last_id) if page.has_more else None
            run = await _page(db, job_id, holder, run, functools.partial(reconciler.apply_stripe_page, page=page))
            if on_progress is not None:
                on_progress(run)
        return run
    finally:
        if upcoming is not None:
            upcoming.cancel()
            with contextlib.suppress(asyncio.CancelledError, StripeCallFailed):
                await upcoming


async def _page(db: AppContext, job_id: str, holder: str, run: Reconciliation, work: PageWork) -> Reconciliation:
    """Decide one page and move the run past it: in one transaction, or for a dry run, decide in a transaction
    that is rolled back and then record the report."""
    if run.dry_run:
        async with db.trial() as session:
            result = await work(session)
        async with db.transaction() as session:
            await _held(session, job_id, holder)
            return _advance(await repository.locked(session, run.id), result)
    async with db.transaction() as session:
        await _held(session, job_id, holder)
        result = await work(session)
        return _advance(await repository.locked(session, run.id), result)


def _advance(run: Reconciliation, result: PageResult) -> Reconciliation:
    counts = dict(run.counts or {})
    for key, value in result.counts.items():
        counts[key] = counts.get(key, 0) + value
    run.counts = counts
    if result.conflicts:
        kept = list(run.conflicts or [])
        run.conflicts = kept + result.conflicts[: max(0, MAX_REPORTED_CONFLICTS - len(kept))]
    run.processed += result.processed
    if result.cursor is None:
        run.phase, run.cursor = next_phase(run.phase, run.direction), None
    else:
        run.cursor = result.cursor
    run.updated_at = utcnow()
    return run


async def _finish(db: AppContext, job_id: str, holder: str, run_id: str) -> Reconciliation:
    now = utcnow()
    async with db.transaction() as session:
        held = await _held(session, job_id, holder)
        run = await repository.locked(session, run_id)
        run.status, run.error, run.finished_at, run.updated_at = "succeeded", None, now, now
        succeed(held, {"reconciliation_id": run.id, "counts": dict(run.counts)}, now)
    SYNC_JOBS.labels(service.JOB_KIND, "succeeded").inc()
    log.info("reconciliation finished", reconciliation_id=run.id, processed=run.processed, **run.counts)
    return run


async def _stop(
    db: AppContext, job_id: str, holder: str, run_id: str, message: str, *, retryable: bool
) -> Reconciliation | None:
    """Record why the run stopped; it keeps its cursor, and a worker retries it later when `retryable`."""
    now = utcnow()
    async with db.transaction() as session:
        held = await jobs.get_held(session, job_id, holder)
        if held is None:
            return None
        run = await repository.locked(session, run_id)
        run.error, run.updated_at = message, now
        if retryable and held.attempts < held.max_attempts:
            retry_later(held, message, stripe_call_backoff(held.attempts, db.settings.stripe_retry_first_seconds), now)
            run.status, outcome = "pending", "retried"
        else:
            fail(held, message, now)
            run.status, run.finished_at, outcome = "failed", now, "failed"
    SYNC_JOBS.labels(service.JOB_KIND, outcome).inc()
    log.warning("reconciliation stopped", reconciliation_id=run_id, outcome=outcome, cursor=run.cursor, error=message)
    return run


async def _run_from_worker(work: WorkerContext, job: SyncJob) -> None:
    # A reconciliation records its own outcome (and gives up after max_attempts) on its run.
    await run_job(work.ctx, job, work.caller, work.holder, retry=True)


def register(registry: Registry) -> None:
    registry.job_kind(service.JOB_KIND, _run_from_worker)


# --- In the foreground: `flexsync reconcile` ---------------------------------------------------------------


OnStart = Callable[[service.Started], None]


async def run_in_foreground(
    settings: Settings,
    connection_id: str,
    *,
    direction: Direction,
    dry_run: bool,
    restart: bool,
    on_start: OnStart,
    on_progress: Progress,
) -> Reconciliation:
    """Start or resume a run on the connection and carry it out in this process, to the end or until it stops.

    Raises APIError when the run cannot start (unknown connection, another run in progress)."""
    db = open_context(settings, max_connections=min(settings.database_max_connections, 8))
    holder = f"cli:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    caller = StripeCaller(db.settings, db.sessions)
    try:
        async with db.transaction() as session:
            connection = await session.get(StripeConnection, connection_id, with_for_update=True)
            if connection is None or connection.deleted_at is not None:
                raise NotFound(f"connection {connection_id} not found")
            started = await service.start(
                session,
                connection,
                direction=direction,
                dry_run=dry_run,
                restart=restart,
                holder=holder,
                lease_seconds=settings.job_lease_seconds,
            )
        on_start(started)
        lease = asyncio.create_task(keep_leases(db, holder, lambda: [started.job.id]))
        try:
            run = await run_job(db, started.job, caller, holder, retry=False, on_progress=on_progress)
        except asyncio.CancelledError:
            # Ctrl-C: say so on the run, so that running the command again resumes it at once.
            await _stop(db, started.job.id, holder, started.run.id, "interrupted", retryable=False)
            raise
        finally:
            lease.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lease
        if run is None:
            raise APIError(409, f"reconciliation {started.run.id} was taken over by another process")
        return run
    finally:
        await caller.aclose()
        await db.close()
