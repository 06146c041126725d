"""Connection queries."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.models import StripeConnection


async def get_live_connection(session: AsyncSession, tenant_id: str, environment_id: str) -> StripeConnection | None:
    """The environment's Stripe connection that has not been deleted (there is at most one)."""
    stmt = select(StripeConnection).where(
        StripeConnection.tenant_id == tenant_id,
        StripeConnection.environment_id == environment_id,
        StripeConnection.provider == "stripe",
        StripeConnection.deleted_at.is_(None),
    )
    return (await session.execute(stmt)).scalar_one_or_none()
