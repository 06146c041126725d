"""The app's wiring: which domain (or the dashboard) runs which jobs and sweeps in the worker. The top of the
house (api, cli) asks for the registry here, so the worker itself imports no domain."""

from __future__ import annotations

import structlog

from flexsync.connections import sweeps as connection_sweeps
from flexsync.idempotency import retention as idempotency
from flexsync.jobs.registry import Registry, Sweep, WorkerContext
from flexsync.models import utcnow
from flexsync.reconcile import runner
from flexsync.reconcile.service import start_for_catch_up_gap
from flexsync.sync import push_jobs
from flexsync.web import sweeps as dashboard_sweeps
from flexsync.webhooks import catch_up
from flexsync.webhooks import sweeps as webhook_sweeps

log = structlog.get_logger(__name__)


async def prune_idempotency_records(work: WorkerContext) -> None:
    deleted = await idempotency.prune(work.ctx.sessions, utcnow())
    if deleted:
        log.info("pruned expired idempotency keys", worker=work.holder, deleted=deleted)


def job_registry() -> Registry:
    registry = Registry()
    push_jobs.register(registry)
    runner.register(registry)
    webhook_sweeps.register(registry)
    connection_sweeps.register(registry)
    dashboard_sweeps.register(registry)
    # Hourly, beside the webhook events' pruning (idempotency/ sits below the jobs package, so it is wired here).
    registry.sweep(
        Sweep(
            "pruning expired idempotency keys",
            webhook_sweeps.PRUNE_INTERVAL_SECONDS,
            prune_idempotency_records,
            own_task=True,
        )
    )
    catch_up.register(registry, on_gap=start_for_catch_up_gap)
    return registry
