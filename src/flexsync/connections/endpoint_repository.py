"""Queries of the managed webhook endpoints (`webhook_endpoints`, one row per connection)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.models import StripeConnection, WebhookEndpoint, utcnow


async def get(session: AsyncSession, connection_id: str, *, for_update: bool = False) -> WebhookEndpoint | None:
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.connection_id == connection_id)
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def for_connections(session: AsyncSession, connection_ids: Sequence[str]) -> dict[str, WebhookEndpoint]:
    if not connection_ids:
        return {}
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.connection_id.in_(connection_ids))
    return {row.connection_id: row for row in (await session.execute(stmt)).scalars()}


async def connection(session: AsyncSession, connection_id: str, *, for_update: bool = False) -> StripeConnection | None:
    """The connection by id alone, deleted or not: the worker and the CLI act outside any API key's scope."""
    stmt = select(StripeConnection).where(StripeConnection.id == connection_id)
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def live_connection_ids(session: AsyncSession, connection_ids: set[str]) -> set[str]:
    """Those of `connection_ids` that name a connection not deleted."""
    if not connection_ids:
        return set()
    stmt = select(StripeConnection.id).where(
        StripeConnection.id.in_(connection_ids), StripeConnection.deleted_at.is_(None)
    )
    return set((await session.execute(stmt)).scalars())


async def add_row(session: AsyncSession, connection_id: str) -> None:
    """The connection's row, if it has none yet (connections made before endpoints were managed have none)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(WebhookEndpoint).values(
        connection_id=connection_id,
        enabled_events=[],
        managed=False,
        retiring_endpoint_ids=[],
        generation=0,
        updated_at=utcnow(),
    )
    await session.execute(stmt.on_conflict_do_nothing(index_elements=[WebhookEndpoint.connection_id]))


async def take_lease(session: AsyncSession, connection_id: str, holder: str, now: datetime, until: datetime) -> bool:
    """Take the row's lease unless another holder's has not run out; True when taken."""
    stmt = (
        update(WebhookEndpoint)
        .where(
            WebhookEndpoint.connection_id == connection_id,
            or_(WebhookEndpoint.lease_until.is_(None), WebhookEndpoint.lease_until < now),
        )
        .values(lease_holder=holder, lease_until=until)
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(stmt)
    return bool(getattr(result, "rowcount", 0))


async def release_lease(session: AsyncSession, connection_id: str, holder: str) -> None:
    stmt = (
        update(WebhookEndpoint)
        .where(WebhookEndpoint.connection_id == connection_id, WebhookEndpoint.lease_holder == holder)
        .values(lease_holder=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )
    await session.execute(stmt)


async def due_for_check(session: AsyncSession, checked_before: datetime, limit: int) -> list[str]:
    """Managed endpoints of active connections not checked since `checked_before`, the longest unchecked first."""
    stmt = (
        select(WebhookEndpoint.connection_id)
        .join(StripeConnection, StripeConnection.id == WebhookEndpoint.connection_id)
        .where(
            WebhookEndpoint.managed.is_(True),
            WebhookEndpoint.stripe_endpoint_id.is_not(None),
            StripeConnection.deleted_at.is_(None),
            StripeConnection.status == "active",
            or_(WebhookEndpoint.checked_at.is_(None), WebhookEndpoint.checked_at < checked_before),
        )
        .order_by(WebhookEndpoint.checked_at.is_not(None), WebhookEndpoint.checked_at)
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars())


async def claim_check(session: AsyncSession, connection_id: str, checked_before: datetime, now: datetime) -> bool:
    """Mark the endpoint checked now, unless another worker has since `checked_before`: one check per interval."""
    stmt = (
        update(WebhookEndpoint)
        .where(
            WebhookEndpoint.connection_id == connection_id,
            or_(WebhookEndpoint.checked_at.is_(None), WebhookEndpoint.checked_at < checked_before),
        )
        .values(checked_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(await session.execute(stmt), "rowcount", 0))


async def statuses(session: AsyncSession) -> list[tuple[str, str | None]]:
    """(connection id, status) of every managed endpoint of a live connection: the endpoint status metric."""
    stmt = (
        select(WebhookEndpoint.connection_id, WebhookEndpoint.status)
        .join(StripeConnection, StripeConnection.id == WebhookEndpoint.connection_id)
        .where(
            WebhookEndpoint.managed.is_(True),
            WebhookEndpoint.stripe_endpoint_id.is_not(None),
            StripeConnection.deleted_at.is_(None),
        )
    )
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]
