"""Connection queries."""

from __future__ import annotations

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.models import StripeConnection
from flexsync.tenancy.service import Scope


async def get_live_connection(session: AsyncSession, tenant_id: str, environment_id: str) -> StripeConnection | None:
    """The environment's Stripe connection that has not been deleted (there is at most one)."""
    stmt = select(StripeConnection).where(
        StripeConnection.tenant_id == tenant_id,
        StripeConnection.environment_id == environment_id,
        StripeConnection.provider == "stripe",
        StripeConnection.deleted_at.is_(None),
    )
    return (await session.execute(stmt)).scalar_one_or_none()


def _scoped(scope: Scope) -> Select[StripeConnection]:
    """The scope's connections, deleted ones left out: to a client a deleted connection no longer exists."""
    return select(StripeConnection).where(
        StripeConnection.tenant_id == scope.tenant_id,
        StripeConnection.environment_id == scope.environment_id,
        StripeConnection.deleted_at.is_(None),
    )


async def get(
    session: AsyncSession, scope: Scope, connection_id: str, *, for_update: bool = False
) -> StripeConnection | None:
    stmt = _scoped(scope).where(StripeConnection.id == connection_id)
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_page(session: AsyncSession, scope: Scope, limit: int, offset: int) -> tuple[list[StripeConnection], int]:
    stmt = _scoped(scope)
    total = (await session.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
    ordered = stmt.order_by(StripeConnection.created_at.desc(), StripeConnection.id.desc())
    rows = (await session.execute(ordered.limit(limit).offset(offset))).scalars().all()
    return list(rows), total


async def all_for_update(session: AsyncSession) -> list[StripeConnection]:
    """Every connection of every tenant, deleted ones included, locked: key rotation rewrites them all."""
    stmt = select(StripeConnection).order_by(StripeConnection.id).with_for_update()
    return list((await session.execute(stmt)).scalars().all())
