"""Forgetting idempotency records after their 24 hours: the workers' hourly pass deletes them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from flexsync.db import transaction
from flexsync.idempotency import repository
from flexsync.idempotency.writes import KEPT_FOR

PRUNE_BATCH = 1000


async def prune(sessions: async_sessionmaker[AsyncSession], now: datetime) -> int:
    """Delete the records older than KEPT_FOR (requests sent again after that run as new ones anyway), a batch
    per transaction so no lock is held for long; returns how many."""
    deleted = 0
    while True:
        async with transaction(sessions) as session:
            count = await repository.prune(session, now - KEPT_FOR, PRUNE_BATCH)
        deleted += count
        if count < PRUNE_BATCH:
            return deleted
