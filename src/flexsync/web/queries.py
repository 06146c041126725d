"""Read-only queries only the dashboard needs, each scoped to one tenant and environment."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from flexsync.models import Customer, SyncJob, WebhookEvent, utcnow
from flexsync.sync import status as sync_status
from flexsync.tenancy.service import Scope


def _contains(text: str) -> str:
    escaped = text.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _customers(scope: Scope, text: str, status: str) -> Select[Customer]:
    stmt = select(Customer).where(
        Customer.tenant_id == scope.tenant_id, Customer.environment_id == scope.environment_id
    )
    if status != "all":
        stmt = stmt.where(Customer.status == status)
    if text.strip():
        pattern = _contains(text)
        stmt = stmt.where(
            or_(
                func.lower(Customer.external_id).like(pattern, escape="\\"),
                func.lower(Customer.email).like(pattern, escape="\\"),
                func.lower(Customer.name).like(pattern, escape="\\"),
            )
        )
    return stmt


async def search_customers(
    session: AsyncSession, scope: Scope, text: str, status: str, limit: int, offset: int
) -> tuple[list[Customer], int]:
    """Customers whose external id, email or name contains `text` (any case), newest first."""
    stmt = _customers(scope, text, status)
    total = (await session.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
    ordered = stmt.order_by(Customer.created_at.desc(), Customer.id.desc()).limit(limit).offset(offset)
    return list((await session.execute(ordered)).scalars().all()), total


@dataclass(frozen=True, slots=True)
class SyncState:
    """How a customer stands with Stripe, as the customer list and page show it."""

    status: str  # "linked" | "pending" | "failed" | "not linked"
    stripe_customer_id: str | None
    last_synced_at: datetime | None
    last_error: str | None
    # Set when the link only remembers a Stripe customer that was deleted in Stripe.
    link_note: str | None = None


def sync_state(sync: dict[str, Any]) -> SyncState:
    """The outbound module's sync status (`GET /v1/customers/{id}/sync`) as one of the four states shown."""
    note = "deleted in Stripe" if sync["link_status"] == "deleted_in_stripe" else None
    if sync["pending_jobs"]:
        status = "pending"
    elif sync["last_error"]:
        status = "failed"
    elif sync["link_status"] == "linked":
        status = "linked"
    else:
        status = "not linked"
    return SyncState(status, sync["stripe_customer_id"], sync["last_synced_at"], sync["last_error"], note)


async def sync_states(session: AsyncSession, customers: Sequence[Customer]) -> dict[str, SyncState]:
    return {
        customer_id: sync_state(sync)
        for customer_id, sync in (await sync_status.sync_statuses(session, customers)).items()
    }


async def customer_events(session: AsyncSession, scope: Scope, customer_id: str, limit: int = 20) -> list[WebhookEvent]:
    stmt = (
        select(WebhookEvent)
        .where(
            WebhookEvent.tenant_id == scope.tenant_id,
            WebhookEvent.environment_id == scope.environment_id,
            WebhookEvent.customer_id == customer_id,
        )
        .order_by(WebhookEvent.received_at.desc(), WebhookEvent.id.desc())
        .limit(limit)
        .options(defer(WebhookEvent.payload))
    )
    return list((await session.execute(stmt)).scalars().all())


@dataclass(frozen=True, slots=True)
class Health:
    """Settings > Integrations' summary of how the sync is doing."""

    last_event_at: datetime | None
    failed_events_24h: int
    failed_jobs_24h: int


FAILED_EVENT_STATUSES = ("failed", "dead")


async def health(session: AsyncSession, scope: Scope) -> Health:
    since = utcnow() - timedelta(hours=24)
    in_scope_events = (WebhookEvent.tenant_id == scope.tenant_id) & (
        WebhookEvent.environment_id == scope.environment_id
    )
    last_event_at = (
        await session.execute(select(func.max(WebhookEvent.received_at)).where(in_scope_events))
    ).scalar_one()
    failed_events = (
        await session.execute(
            select(func.count()).where(
                in_scope_events,
                WebhookEvent.status.in_(FAILED_EVENT_STATUSES),
                WebhookEvent.received_at >= since,
            )
        )
    ).scalar_one()
    failed_jobs = (
        await session.execute(
            select(func.count()).where(
                SyncJob.tenant_id == scope.tenant_id,
                SyncJob.environment_id == scope.environment_id,
                SyncJob.status == "failed",
                SyncJob.updated_at >= since,
            )
        )
    ).scalar_one()
    return Health(last_event_at, failed_events, failed_jobs)
