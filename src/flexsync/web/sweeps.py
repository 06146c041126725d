"""The dashboard's periodic work in the worker (jobs/registry.py): pruning the rows of ended sessions."""

from __future__ import annotations

import structlog

from flexsync.jobs.registry import Registry, Sweep, WorkerContext
from flexsync.models import utcnow
from flexsync.tenancy import dashboard_sessions

log = structlog.get_logger(__name__)

# How often the worker deletes the rows of dashboard sessions that can open nothing any more (first when it
# starts). An ended session is refused at its first lookup whether or not its row is gone: this only keeps
# the table to the sessions of the last 12 hours. Several workers may do it at once: each deletes what the
# others have not.
PRUNE_INTERVAL_SECONDS = 3600.0


async def prune_ended_sessions(work: WorkerContext) -> None:
    idle = dashboard_sessions.idle_limit(work.ctx.settings)
    async with work.ctx.transaction() as session:
        deleted = await dashboard_sessions.prune(session, idle, utcnow())
    if deleted:
        log.info("pruned ended dashboard sessions", worker=work.holder, deleted=deleted)


def register(registry: Registry) -> None:
    registry.sweep(Sweep("pruning ended dashboard sessions", PRUNE_INTERVAL_SECONDS, prune_ended_sessions))
