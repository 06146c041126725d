"""Every query on the idempotency records. The request path's statements are built once (the key's lookup and
the answer's insert run in every write that carries a key)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, delete, insert, select, tuple_
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.models import IdempotencyKey

RECORDS: Table = IdempotencyKey.__table__  # type: ignore[assignment]

_FIND = select(
    RECORDS.c.fingerprint, RECORDS.c.status_code, RECORDS.c.headers, RECORDS.c.body, RECORDS.c.created_at
).where(RECORDS.c.environment_id == bindparam("environment_id"), RECORDS.c.key == bindparam("key"))
_ADD = insert(RECORDS)
_FORGET = delete(RECORDS).where(
    RECORDS.c.environment_id == bindparam("environment_id"), RECORDS.c.key == bindparam("key")
)


async def find(session: AsyncSession, environment_id: str, key: str) -> Row[Any, Any, Any, Any, Any] | None:
    return (await session.execute(_FIND, {"environment_id": environment_id, "key": key})).one_or_none()


async def add(session: AsyncSession, record: dict[str, Any]) -> None:
    await session.execute(_ADD, record)


async def forget(session: AsyncSession, environment_id: str, key: str) -> None:
    await session.execute(_FORGET, {"environment_id": environment_id, "key": key})


async def prune(session: AsyncSession, created_before: datetime, limit: int) -> int:
    """Delete up to `limit` records made before `created_before`; returns how many."""
    batch = select(RECORDS.c.environment_id, RECORDS.c.key).where(RECORDS.c.created_at < created_before).limit(limit)
    statement = delete(RECORDS).where(tuple_(RECORDS.c.environment_id, RECORDS.c.key).in_(batch))
    deleted: int = (await session.execute(statement)).rowcount  # type: ignore[attr-defined]
    return deleted
