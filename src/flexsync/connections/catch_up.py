"""A connection's catch-up state as Settings > Integrations shows it, and asking for a catch-up run.

The run itself (listing Stripe's events, storing and applying the missed ones) is webhooks/catch_up.py's; this
module only reads and writes the connection's `stripe_catch_ups` row, so the connection API can show and
request it. A connection without a row has never been caught up: its cursor is its creation (history before
it is reconciliation's job), or the oldest event Stripe still keeps, whichever is later.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.models import CatchUpState, Reconciliation, StripeConnection, WebhookEvent, utcnow

# Stripe keeps events for 30 days: a cursor older than that leaves a stretch no catch-up can read (a gap).
STRIPE_EVENT_RETENTION = timedelta(days=30)
# Every run re-reads this much before the cursor: events that Stripe lists a little after their `created`
# second, and others of the cursor's own second.
OVERLAP_SECONDS = 60
# A reconciliation that reads every Stripe customer closes a gap (the catch-up cannot).
GAP_CLOSING_DIRECTIONS = ("both", "from-stripe")
RECOVERED_WINDOW = timedelta(hours=24)


def unix(moment: datetime) -> int:
    return int(moment.timestamp())


def from_unix(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def initial_cursor(connection: StripeConnection, now: datetime) -> int:
    return max(unix(connection.created_at), unix(now - STRIPE_EVENT_RETENTION))


async def get(session: AsyncSession, connection_id: str) -> CatchUpState | None:
    return await session.get(CatchUpState, connection_id)


async def locked(session: AsyncSession, connection: StripeConnection, now: datetime) -> CatchUpState:
    """The connection's state, locked until the transaction ends; created at its initial cursor if missing.
    The caller holds the connection's row locked, so two processes cannot both create it."""
    state = await session.get(CatchUpState, connection.id, with_for_update=True)
    if state is None:
        state = CatchUpState(
            connection_id=connection.id,
            cursor=initial_cursor(connection, now),
            run_counts={},
            created_at=now,
            updated_at=now,
        )
        session.add(state)
        await session.flush()
    return state


async def request(session: AsyncSession, connection: StripeConnection, since: datetime | None) -> CatchUpState:
    """Ask the workers for a catch-up of the connection (locked by the caller) now, from `since` if given."""
    now = utcnow()
    state = await locked(session, connection, now)
    state.requested_at = now
    state.requested_since = unix(since) if since is not None else None
    state.updated_at = now
    return state


async def open_gaps(session: AsyncSession, states: Sequence[CatchUpState]) -> set[str]:
    """The connections among `states` whose gap no reconciliation has closed since it was found."""
    found = [state for state in states if state.gap_detected_at is not None]
    if not found:
        return set()
    stmt = (
        select(Reconciliation.connection_id, func.max(Reconciliation.finished_at))
        .where(
            Reconciliation.connection_id.in_([state.connection_id for state in found]),
            Reconciliation.status == "succeeded",
            Reconciliation.dry_run.is_(False),
            Reconciliation.direction.in_(GAP_CLOSING_DIRECTIONS),
        )
        .group_by(Reconciliation.connection_id)
    )
    closed_at = {row[0]: row[1] for row in (await session.execute(stmt)).all()}
    return {
        state.connection_id
        for state in found
        if closed_at.get(state.connection_id) is None or closed_at[state.connection_id] < state.gap_detected_at  # type: ignore[operator]
    }


async def recovered_since(session: AsyncSession, connection: StripeConnection, since: datetime) -> int:
    """How many events catch-up stored for the connection since then (no webhook had delivered them)."""
    stmt = select(func.count()).where(
        WebhookEvent.environment_id == connection.environment_id,
        WebhookEvent.received_at >= since,
        WebhookEvent.connection_id == connection.id,
        WebhookEvent.source == "catch_up",
    )
    return int((await session.execute(stmt)).scalar_one())


def lease_live(state: CatchUpState | None, now: datetime) -> bool:
    return bool(state is not None and state.leased_until is not None and state.leased_until > now)


async def view(session: AsyncSession, connection: StripeConnection) -> dict[str, Any]:
    """The connection's `catch_up` object."""
    now = utcnow()
    state = await get(session, connection.id)
    cursor = state.cursor if state is not None else initial_cursor(connection, now)
    gap = state is not None and state.connection_id in await open_gaps(session, [state])
    return {
        "cursor": from_unix(cursor),
        "last_run_at": state.last_run_at if state is not None else None,
        "lag_seconds": max(0, unix(now) - cursor),
        "last_error": state.last_error if state is not None else None,
        "recovered_24h": await recovered_since(session, connection, now - RECOVERED_WINDOW),
        "running": lease_live(state, now),
        "requested": state is not None and state.requested_at is not None,
        "last_run": dict(state.run_counts)
        if state is not None and state.run_position is None and state.run_counts
        else None,
        "gap": (
            {"since": from_unix(state.gap_since or cursor), "detected_at": state.gap_detected_at}
            if gap and state is not None
            else None
        ),
    }
