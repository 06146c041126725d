"""The webhook domain's periodic work in the worker (jobs/registry.py): retrying stored events, and pruning
old ones."""

from __future__ import annotations

import structlog

from flexsync.jobs.registry import Registry, Sweep, WorkerContext
from flexsync.models import utcnow
from flexsync.webhooks import service, stored

log = structlog.get_logger(__name__)

# How often the worker prunes stored webhook events older than FLEXSYNC_WEBHOOK_EVENT_RETENTION_DAYS (first when it
# starts), in a task of its own: a large first pass must not hold up claiming jobs. Several workers may do it at
# once: each deletes what the others have not.
PRUNE_INTERVAL_SECONDS = 3600.0


async def retry_stored_events(work: WorkerContext) -> None:
    """Stripe events that failed to apply, or that a stopped server left queued."""
    await stored.apply_due_events(work.ctx, caller=work.caller)


async def prune_stored_events(work: WorkerContext) -> None:
    pruned = await service.prune(work.ctx, work.ctx.settings.webhook_event_retention_days, utcnow())
    if pruned.deleted:
        log.info(
            "pruned old webhook events",
            worker=work.holder,
            deleted=pruned.deleted,
            received_before=pruned.received_before.isoformat(),
        )


def register(registry: Registry) -> None:
    # Stripe webhook events that failed to apply or were left queued, every FLEXSYNC_WEBHOOK_RETRY_SWEEP_SECONDS.
    registry.sweep(
        Sweep(
            "retrying Stripe webhook events",
            lambda settings: settings.webhook_retry_sweep_seconds,
            retry_stored_events,
        )
    )
    registry.sweep(
        Sweep(
            "pruning old webhook events",
            PRUNE_INTERVAL_SECONDS,
            prune_stored_events,
            own_task=True,
            enabled=lambda settings: bool(settings.webhook_event_retention_days),
        )
    )
