"""Every webhook_events query: storing deliveries once, claiming stored events to apply, the scoped list.

The ingest path uses Core statements on the table (no ORM objects per request): one multi-row
`INSERT ... ON CONFLICT DO NOTHING RETURNING id` per batch, on PostgreSQL and SQLite alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, Table, and_, bindparam, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from flexsync.ids import ulid_text
from flexsync.kit.bulk import Inserts
from flexsync.models import EVENT_PENDING, WebhookEvent
from flexsync.tenancy.service import Scope

if TYPE_CHECKING:
    from flexsync.sync.inbound import Outcome

EVENTS: Table = WebhookEvent.__table__  # type: ignore[assignment]
EVENT_STATUSES = ("queued", "applied", "ignored", "failed", "dead")
# What applying a stored event reads; the payload is parsed once per claim.
CLAIM_COLUMNS = (EVENTS.c.id, EVENTS.c.connection_id, EVENTS.c.stripe_event_id, EVENTS.c.type, EVENTS.c.payload)

EventKey = tuple[str, str]  # (connection_id, stripe_event_id)
ClaimedEvent = Row[Any, Any, Any, Any, Any]  # the CLAIM_COLUMNS of one event


def add_events(inserts: Inserts, rows: Sequence[Mapping[str, Any]]) -> None:
    """Add events to `inserts`, last: its write returns the ids of those not stored before."""
    inserts.add(
        EVENTS, rows, skip_conflicts_on=("connection_id", "stripe_event_id"), returning="id", separate="payload"
    )


async def insert_events(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """Insert the events not stored yet, in one statement; returns the ids actually inserted."""
    inserts = Inserts()
    add_events(inserts, rows)
    return set(await inserts.write(session))


async def claim_due(session: AsyncSession, now: datetime, limit: int) -> Sequence[ClaimedEvent]:
    """Lock up to `limit` events due for (another) attempt; other processes skip the locked ones."""
    stmt = (
        select(*CLAIM_COLUMNS)
        .where(EVENT_PENDING, EVENTS.c.next_attempt_at <= now)
        .order_by(EVENTS.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return (await session.execute(stmt)).all()


async def claim_by_ids(
    session: AsyncSession, event_ids: Sequence[str], *, pending_only: bool
) -> Sequence[ClaimedEvent]:
    """Lock these events. Pending only: skip those another process holds or has finished (the normal path);
    otherwise wait for them, whatever their status (a replay)."""
    stmt = select(*CLAIM_COLUMNS).where(EVENTS.c.id.in_(event_ids)).order_by(EVENTS.c.id)
    stmt = stmt.where(EVENT_PENDING).with_for_update(skip_locked=True) if pending_only else stmt.with_for_update()
    return (await session.execute(stmt)).all()


async def record_outcomes(
    session: AsyncSession, rows: Sequence[ClaimedEvent], outcomes: Sequence[Outcome], now: datetime, recovery: timedelta
) -> None:
    """Write each claimed event's outcome: final ones count an attempt, a wait for Stripe's state does not."""
    params = []
    for row, outcome in zip(rows, outcomes, strict=True):
        waiting = outcome.status == "queued"
        params.append(
            {
                "event_id": row.id,
                "new_status": outcome.status,
                "new_note": outcome.note,
                "new_customer_id": outcome.customer_id,
                "attempt": 0 if waiting else 1,
                "new_processed_at": None if waiting else now,
                "new_next_attempt_at": now + recovery if waiting else None,
            }
        )
    stmt = (
        update(EVENTS)
        .where(EVENTS.c.id == bindparam("event_id", type_=EVENTS.c.id.type))
        .values(
            status=bindparam("new_status", type_=EVENTS.c.status.type),
            note=bindparam("new_note", type_=EVENTS.c.note.type),
            customer_id=func.coalesce(
                bindparam("new_customer_id", type_=EVENTS.c.customer_id.type), EVENTS.c.customer_id
            ),
            attempts=EVENTS.c.attempts + bindparam("attempt", type_=EVENTS.c.attempts.type),
            last_error=None,
            # Typed binds: the columns' UTC handling applies (SQLite stores naive UTC, like every other write).
            processed_at=func.coalesce(
                bindparam("new_processed_at", type_=EVENTS.c.processed_at.type), EVENTS.c.processed_at
            ),
            next_attempt_at=bindparam("new_next_attempt_at", type_=EVENTS.c.next_attempt_at.type),
        )
    )
    connection = await session.connection()
    await connection.execute(stmt, params)


async def record_failure(
    session: AsyncSession,
    event_id: str,
    error: str,
    now: datetime,
    max_attempts: int,
    delay: Callable[[int], timedelta],
) -> tuple[str, str] | None:
    """Count a failed attempt: retried after `delay(attempts)`, or `dead` once `max_attempts` are spent.
    Returns the event's source and new status (None if it is gone)."""
    found = (
        await session.execute(
            select(EVENTS.c.attempts, EVENTS.c.source).where(EVENTS.c.id == event_id).with_for_update()
        )
    ).one_or_none()
    if found is None:
        return None
    attempts, source = found
    attempts += 1
    dead = attempts >= max_attempts
    await session.execute(
        update(EVENTS)
        .where(EVENTS.c.id == event_id)
        .values(
            status="dead" if dead else "failed",
            attempts=attempts,
            last_error=error,
            next_attempt_at=None if dead else now + delay(attempts),
        )
    )
    return source, "dead" if dead else "failed"


def _scoped(scope: Scope) -> Any:
    return and_(WebhookEvent.tenant_id == scope.tenant_id, WebhookEvent.environment_id == scope.environment_id)


async def list_page(
    session: AsyncSession,
    scope: Scope,
    status: str | None,
    event_type: str | None,
    limit: int,
    offset: int,
    source: str | None = None,
) -> tuple[list[WebhookEvent], int]:
    """The scope's events, newest first. The payload column is not loaded: a list never shows it.

    The total is counted by environment alone: an environment id names one environment of one tenant (the
    scope's, checked with its API key), and without the tenant column PostgreSQL counts an environment's events
    from `ix_webhook_events_env_received` alone, an index-only scan, instead of reading every row of the table
    (BENCHMARKS.md)."""
    filters = []
    if status is not None:
        filters.append(WebhookEvent.status == status)
    if event_type is not None:
        filters.append(WebhookEvent.type == event_type)
    if source is not None:
        filters.append(WebhookEvent.source == source)
    in_environment = WebhookEvent.environment_id == scope.environment_id
    total = (await session.execute(select(func.count()).where(in_environment, *filters))).scalar_one()
    stmt = (
        select(WebhookEvent)
        .where(_scoped(scope), *filters)
        .order_by(WebhookEvent.received_at.desc(), WebhookEvent.id.desc())
        .limit(limit)
        .offset(offset)
    )
    rows = (await session.execute(stmt.options(defer(WebhookEvent.payload)))).scalars().all()
    return list(rows), total


async def get(session: AsyncSession, scope: Scope, event_id: str) -> WebhookEvent | None:
    stmt = select(WebhookEvent).where(_scoped(scope), WebhookEvent.id == event_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def find_by_any_id(session: AsyncSession, event_id: str) -> list[WebhookEvent]:
    """Events with this flexsync id or this Stripe event id (one per connection that received it)."""
    stmt = (
        select(WebhookEvent)
        .where(or_(WebhookEvent.id == event_id, WebhookEvent.stripe_event_id == event_id))
        .order_by(WebhookEvent.received_at)
    )
    return list((await session.execute(stmt)).scalars().all())


# Events pruned once old enough: those whose work is done. Queued, failed and dead events stay until they are
# applied or replayed; `customer.deleted` events stay for good: they are how a deleted Stripe customer is
# recognised when a late event for it arrives (see sync.inbound, the `deleted` lookup).
PRUNABLE_STATUSES = ("applied", "ignored")
KEPT_TYPE = "customer.deleted"
EVENT_ID_PREFIX = "whevt"


async def prune_events(session: AsyncSession, received_before: datetime, limit: int) -> int:
    """Delete up to `limit` of the oldest events received before then whose work is done; returns how many.

    Event ids are ULIDs made when the delivery arrived, so they sort by arrival: `id` below the id of the
    cutoff's millisecond lets the primary key's index find the oldest ones without reading the rest of the
    table (`received_at` is checked too; it is the rule). They are then deleted by id, each found through the
    index (deleting `WHERE id IN (SELECT ...)` in one statement had PostgreSQL scan the whole table per batch),
    with the conditions checked again, so an event replayed meanwhile is left alone."""
    milliseconds = int(received_before.timestamp() * 1000)
    id_bound = f"{EVENT_ID_PREFIX}_{ulid_text(milliseconds, 0)}"
    prunable = and_(
        EVENTS.c.received_at < received_before,
        EVENTS.c.status.in_(PRUNABLE_STATUSES),
        EVENTS.c.type != KEPT_TYPE,
    )
    oldest = select(EVENTS.c.id).where(EVENTS.c.id < id_bound, prunable).order_by(EVENTS.c.id).limit(limit)
    ids = list((await session.execute(oldest)).scalars())
    if not ids:
        return 0
    result = await session.execute(delete(EVENTS).where(EVENTS.c.id.in_(ids), prunable))
    return int(getattr(result, "rowcount", 0) or 0)
