"""Every query on the idempotency records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, tuple_
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.models import IdempotencyKey

RECORDS = IdempotencyKey.__table__

async def find(session: AsyncSession, environment_id: str, key: str) -> Row[Any] | None:
    query = select(
        RECORDS.c.fingerprint, RECORDS.c.status_code, RECORDS.c.headers, RECORDS.c.body, RECORDS.c.created_at
    ).where(RECORDS.c.environment_id == environment_id, RECORDS.c.key == key)
    return (await session.execute(query)).one_or_none()


async def add(session: AsyncSession, record: dict[str, Any]) -> None:
    await session.execute(insert(RECORDS), record)


async def forget(session: AsyncSession, environment_id: str, key: str) -> None:
    await session.execute(delete(RECORDS).where(RECORDS.c.environment_id == environment_id, RECORDS.c.key == key))


async def prune(session: AsyncSession, created_before: datetime, limit: int) -> int:
    """Delete up to `limit` records made before `created_before`; returns how many."""
    batch = select(RECORDS.c.environment_id, RECORDS.c.key).where(RECORDS.c.created_at < created_before).limit(limit)
    statement = delete(RECORDS).where(tuple_(RECORDS.c.environment_id, RECORDS.c.key).in_(batch))
    deleted: int = (await session.execute(statement)).rowcount  # type: ignore[attr-defined]
    return deleted
