"""Every query on the idempotency records. The request path's statements are built once (the key's lookup and
the answer's insert run in every write that carries a key)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Table, and_, bindparam, delete, func, insert, literal_column, select, tuple_
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.models import IdempotencyKey

RECORDS: Table = IdempotencyKey.__table__  # type: ignore[assignment]

_FIND = select(
    RECORDS.c.fingerprint, RECORDS.c.status_code, RECORDS.c.headers, RECORDS.c.body, RECORDS.c.created_at
).where(RECORDS.c.environment_id == bindparam("environment_id"), RECORDS.c.key == bindparam("key"))
# PostgreSQL: the key's advisory lock, taken without waiting, and the key's record, in one round trip (see
# writes.RequestWrite._claim for what the statement's snapshot means).
_ONE = select(literal_column("1").label("one")).subquery("one")
_LOCK_AND_FIND = select(
    func.pg_try_advisory_xact_lock(bindparam("lock", type_=BigInteger)).label("locked"), *_FIND.selected_columns
).select_from(
    _ONE.outerjoin(
        RECORDS, and_(RECORDS.c.environment_id == bindparam("environment_id"), RECORDS.c.key == bindparam("key"))
    )
)
_ADD = insert(RECORDS)
_FORGET = delete(RECORDS).where(
    RECORDS.c.environment_id == bindparam("environment_id"), RECORDS.c.key == bindparam("key")
)


async def find(session: AsyncSession, environment_id: str, key: str) -> Row[Any] | None:
    result = await session.execute(_FIND, {"environment_id": environment_id, "key": key})
    found: Row[Any] | None = result.one_or_none()  # type: ignore[assignment]
    return found


async def lock_and_find(
    session: AsyncSession, lock: int, environment_id: str, key: str
) -> tuple[bool, Row[Any] | None]:
    """PostgreSQL: whether the key's advisory lock was free (now held until the transaction ends), and its record
    (as `find` gives it) as of the statement's start."""
    row = (await session.execute(_LOCK_AND_FIND, {"lock": lock, "environment_id": environment_id, "key": key})).one()
    return bool(row.locked), (row if row.fingerprint is not None else None)


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
