"""Delivery health: is every Stripe change reaching flexsync? For /metrics, the dashboard's panel and banner.

Read from the database, so it holds whichever processes run the webhooks and the catch-ups.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.connections import catch_up
from flexsync.context import AppContext
from flexsync.metrics import (
    CATCH_UP_FAILING,
    CATCH_UP_GAP,
    CATCH_UP_LAG,
    STRIPE_EVENTS_FAILING,
    SYNC_JOBS_FAILED,
)
from flexsync.models import CatchUpState, StripeConnection, SyncJob, WebhookEndpoint, WebhookEvent, utcnow

# A catch-up cursor further behind than this many intervals (and at least LAGGING_MIN) counts as lagging: runs
# are not finishing.
LAGGING_INTERVALS = 3
LAGGING_MIN = timedelta(minutes=30)


@dataclass(frozen=True, slots=True)
class CatchUpHealth:
    connection_id: str
    cursor: datetime
    lag_seconds: int
    last_run_at: datetime | None
    last_error: str | None
    gap: bool
    running: bool
    # What Stripe last said of the endpoint flexsync manages for the connection (None: none managed).
    endpoint_status: str | None = None


async def catch_ups(session: AsyncSession, now: datetime, environment_id: str | None = None) -> list[CatchUpHealth]:
    """The catch-up of every active connection (of one environment, if given)."""
    stmt = (
        select(StripeConnection, CatchUpState, WebhookEndpoint.status)
        .outerjoin(CatchUpState, CatchUpState.connection_id == StripeConnection.id)
        .outerjoin(
            WebhookEndpoint,
            (WebhookEndpoint.connection_id == StripeConnection.id) & WebhookEndpoint.managed.is_(True),
        )
        .where(StripeConnection.deleted_at.is_(None), StripeConnection.status == "active")
    )
    if environment_id is not None:
        stmt = stmt.where(StripeConnection.environment_id == environment_id)
    rows = (await session.execute(stmt)).all()
    gaps = await catch_up.open_gaps(session, [state for _connection, state, _endpoint in rows if state is not None])
    found = []
    for connection, state, endpoint_status in rows:
        cursor = state.cursor if state is not None else catch_up.initial_cursor(connection, now)
        found.append(
            CatchUpHealth(
                connection_id=connection.id,
                cursor=catch_up.from_unix(cursor),
                lag_seconds=max(0, catch_up.unix(now) - cursor),
                last_run_at=state.last_run_at if state is not None else None,
                last_error=state.last_error if state is not None else None,
                gap=connection.id in gaps,
                running=catch_up.lease_live(state, now),
                endpoint_status=endpoint_status,
            )
        )
    return found


def lagging(lag_seconds: int, interval_seconds: float) -> bool:
    """Whether a cursor this far behind is further than runs every `interval_seconds` leave it (0: catch-up is
    off, so never)."""
    if interval_seconds <= 0:
        return False
    allowed = max(LAGGING_MIN, timedelta(seconds=interval_seconds * LAGGING_INTERVALS))
    return lag_seconds > allowed.total_seconds()


async def problems(session: AsyncSession, environment_id: str, interval_seconds: float) -> list[str]:
    """What is wrong with the environment's delivery from Stripe, one sentence each: the dashboard's banner."""
    found = []
    for health in await catch_ups(session, utcnow(), environment_id):
        if health.endpoint_status in ("disabled", "missing"):
            found.append(
                f"Stripe's webhook endpoint for flexsync is {health.endpoint_status}: Stripe sends no events to it "
                "(catch-up still lists them every few minutes). Re-enable it on Settings > Integrations."
            )
        if health.gap:
            found.append(
                "Catch-up found a stretch older than the 30 days of events Stripe keeps: changes made in Stripe "
                "then may be missing. Run a from-Stripe reconciliation."
            )
        if health.last_error:
            found.append(f"Catch-up from Stripe's Events API is failing: {health.last_error}")
        elif lagging(health.lag_seconds, interval_seconds):
            found.append(f"Catch-up from Stripe's Events API is {health.lag_seconds // 60} minutes behind.")
    return found


async def last_webhook_at(session: AsyncSession, environment_id: str) -> datetime | None:
    """When Stripe last delivered an event to the environment (its newest stored webhook event)."""
    stmt = (
        select(WebhookEvent.received_at)
        .where(WebhookEvent.environment_id == environment_id, WebhookEvent.source == "webhook")
        .order_by(WebhookEvent.received_at.desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def refresh_gauges(db: AppContext) -> None:
    """Set the catch-up and sync-job gauges from the database, before /metrics answers."""
    now = utcnow()
    async with db.read() as session:
        found = await catch_ups(session, now)
        failed_jobs = (await session.execute(select(func.count()).where(SyncJob.status == "failed"))).scalar_one()
        failing_events = (
            await session.execute(select(func.count()).where(WebhookEvent.status == "failed"))
        ).scalar_one()
    for gauge in (CATCH_UP_LAG, CATCH_UP_FAILING, CATCH_UP_GAP):
        gauge.clear()
    for health in found:
        CATCH_UP_LAG.labels(health.connection_id).set(health.lag_seconds)
        CATCH_UP_FAILING.labels(health.connection_id).set(1 if health.last_error else 0)
        CATCH_UP_GAP.labels(health.connection_id).set(1 if health.gap else 0)
    SYNC_JOBS_FAILED.set(failed_jobs)
    STRIPE_EVENTS_FAILING.set(failing_events)
