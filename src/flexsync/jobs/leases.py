"""Keeping job leases: whoever runs a job (a worker, the CLI's foreground reconciliation) renews its lease
while it works, so no other process takes the job over; if the holder dies, the lease runs out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from datetime import timedelta

import structlog

from flexsync.context import AppContext
from flexsync.jobs import repository
from flexsync.models import utcnow

log = structlog.get_logger(__name__)


async def keep_leases(ctx: AppContext, holder: str, held: Callable[[], Collection[str]]) -> None:
    """Until cancelled, every third of a lease, extend the leases of the jobs `held()` names."""
    lease_seconds = ctx.settings.job_lease_seconds
    while True:
        await asyncio.sleep(lease_seconds / 3)
        job_ids = list(held())
        if not job_ids:
            continue
        until = utcnow() + timedelta(seconds=lease_seconds)
        try:
            async with ctx.transaction() as session:
                await repository.extend_leases(session, holder, job_ids, until)
        except Exception:
            log.exception("could not renew job leases", holder=holder, job_ids=job_ids)
