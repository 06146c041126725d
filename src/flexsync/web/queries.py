"""Read-only queries only the dashboard needs, each scoped to one tenant and environment."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.models import ApiKey, Customer, CustomerLink, Environment, SyncJob, Tenant, WebhookEvent, utcnow
from flexsync.tenancy.service import Scope


@dataclass(frozen=True, slots=True)
class KeyHolder:
    """A signed-in session's API key, with the names shown in the page header."""

    scope: Scope
    key_prefix: str
    tenant_name: str
    environment_name: str


async def active_key(session: AsyncSession, api_key_id: str) -> KeyHolder | None:
    """The key behind a session, or None once it is revoked or gone (which ends the session)."""
    stmt = (
        select(ApiKey, Tenant.name, Environment.name)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .join(Environment, Environment.id == ApiKey.environment_id)
        .where(ApiKey.id == api_key_id, ApiKey.revoked_at.is_(None))
    )
    row = (await session.execute(stmt)).first()
    if row is None:
        return None
    key, tenant_name, environment_name = row
    scope = Scope(tenant_id=key.tenant_id, environment_id=key.environment_id, api_key_id=key.id)
    return KeyHolder(scope, key.display_prefix, tenant_name, environment_name)


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
    # Set when a link exists but no longer counts (its Stripe customer was deleted): shown beside the status.
    link_note: str | None = None


ACTIVE_JOB_STATUSES = frozenset({"pending", "running"})
FAILED_JOB_STATUSES = frozenset({"failed"})


def sync_state(link: CustomerLink | None, latest_job: SyncJob | None) -> SyncState:
    stripe_id = link.stripe_customer_id if link is not None else None
    synced_at = link.last_synced_at if link is not None else None
    note = f"Stripe customer {link.status}" if link is not None and link.status != "linked" else None
    if latest_job is not None and latest_job.status in ACTIVE_JOB_STATUSES:
        return SyncState("pending", stripe_id, synced_at, latest_job.last_error, note)
    if latest_job is not None and latest_job.status in FAILED_JOB_STATUSES:
        return SyncState("failed", stripe_id, synced_at, latest_job.last_error, note)
    if link is None or note is not None:
        return SyncState("not linked", stripe_id, synced_at, None, note)
    return SyncState("failed" if link.last_error else "linked", stripe_id, synced_at, link.last_error)


async def sync_states(
    session: AsyncSession, scope: Scope, connection_id: str | None, customer_ids: Sequence[str]
) -> dict[str, SyncState]:
    """Each customer's link (on the environment's live connection) and latest sync job, in two queries."""
    if not customer_ids:
        return {}
    links: dict[str, CustomerLink] = {}
    if connection_id is not None:
        link_rows = await session.execute(
            select(CustomerLink).where(
                CustomerLink.connection_id == connection_id, CustomerLink.customer_id.in_(customer_ids)
            )
        )
        links = {link.customer_id: link for link in link_rows.scalars()}
    newest = (
        select(SyncJob.customer_id, func.max(SyncJob.created_at).label("created_at"))
        .where(
            SyncJob.tenant_id == scope.tenant_id,
            SyncJob.environment_id == scope.environment_id,
            SyncJob.customer_id.in_(customer_ids),
        )
        .group_by(SyncJob.customer_id)
        .subquery()
    )
    job_rows = await session.execute(
        select(SyncJob)
        .join(newest, (SyncJob.customer_id == newest.c.customer_id) & (SyncJob.created_at == newest.c.created_at))
        .where(SyncJob.tenant_id == scope.tenant_id, SyncJob.environment_id == scope.environment_id)
    )
    jobs = {job.customer_id: job for job in job_rows.scalars() if job.customer_id is not None}
    return {cid: sync_state(links.get(cid), jobs.get(cid)) for cid in customer_ids}


async def customer_jobs(session: AsyncSession, scope: Scope, customer_id: str, limit: int = 20) -> list[SyncJob]:
    stmt = (
        select(SyncJob)
        .where(
            SyncJob.tenant_id == scope.tenant_id,
            SyncJob.environment_id == scope.environment_id,
            SyncJob.customer_id == customer_id,
        )
        .order_by(SyncJob.created_at.desc(), SyncJob.id.desc())
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars().all())


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
                SyncJob.status.in_(FAILED_JOB_STATUSES),
                SyncJob.updated_at >= since,
            )
        )
    ).scalar_one()
    return Health(last_event_at, failed_events, failed_jobs)
