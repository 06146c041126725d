"""The connections domain's periodic work in the worker (jobs/registry.py): reading the status of the Stripe
webhook endpoints flexsync manages."""

from __future__ import annotations

from flexsync.connections import managed_endpoint
from flexsync.jobs.registry import Registry, Sweep, WorkerContext

# How often a worker looks for managed endpoints due a status check. Each endpoint is checked once per
# FLEXSYNC_WEBHOOK_ENDPOINT_CHECK_SECONDS by one worker (a Stripe request); the look itself is a small query.
DUE_CHECK_LOOK_SECONDS = 5.0


async def check_webhook_endpoints(work: WorkerContext) -> None:
    await managed_endpoint.check_due(work.ctx, work.caller)


def register(registry: Registry) -> None:
    # A task of its own: a batch of Stripe requests must not hold up claiming jobs.
    registry.sweep(
        Sweep(
            "checking the managed Stripe webhook endpoints",
            DUE_CHECK_LOOK_SECONDS,
            check_webhook_endpoints,
            own_task=True,
            enabled=lambda settings: bool(settings.webhook_endpoint_check_seconds),
        )
    )
