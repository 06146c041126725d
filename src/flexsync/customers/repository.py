"""Every customer query, always scoped to one tenant and environment."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from flexsync.models import Customer
from flexsync.tenancy.service import Scope

SORT_COLUMNS: dict[str, InstrumentedAttribute[Any]] = {
    "created_at": Customer.created_at,
    "updated_at": Customer.updated_at,
    "name": Customer.name,
    "external_id": Customer.external_id,
    "email": Customer.email,
}


@dataclass(slots=True)
class CustomerQuery:
    status: str = "published"
    customer_ids: Sequence[str] | None = None
    external_ids: Sequence[str] | None = None
    parent_customer_ids: Sequence[str] | None = None
    email: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    sort: list[tuple[str, str]] = field(default_factory=list)
    order: str = "desc"


def _scoped(scope: Scope) -> Select[Customer]:
    return select(Customer).where(
        Customer.tenant_id == scope.tenant_id, Customer.environment_id == scope.environment_id
    )


async def get(session: AsyncSession, scope: Scope, customer_id: str, *, for_update: bool = False) -> Customer | None:
    stmt = _scoped(scope).where(Customer.id == customer_id)
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_published_by_external_id(
    session: AsyncSession, scope: Scope, external_id: str, *, for_update: bool = False
) -> Customer | None:
    stmt = _scoped(scope).where(Customer.external_id == external_id, Customer.status == "published")
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


def _filtered(scope: Scope, query: CustomerQuery) -> Select[Customer]:
    stmt = _scoped(scope)
    if query.status != "all":
        stmt = stmt.where(Customer.status == query.status)
    if query.customer_ids is not None:
        stmt = stmt.where(Customer.id.in_(query.customer_ids))
    if query.external_ids is not None:
        stmt = stmt.where(Customer.external_id.in_(query.external_ids))
    if query.parent_customer_ids is not None:
        stmt = stmt.where(Customer.parent_customer_id.in_(query.parent_customer_ids))
    if query.email is not None:
        stmt = stmt.where(func.lower(Customer.email) == query.email.strip().lower())
    if query.created_from is not None:
        stmt = stmt.where(Customer.created_at >= query.created_from)
    if query.created_to is not None:
        stmt = stmt.where(Customer.created_at <= query.created_to)
    return stmt


async def list_page(
    session: AsyncSession, scope: Scope, query: CustomerQuery, limit: int, offset: int
) -> tuple[list[Customer], int]:
    stmt = _filtered(scope, query)
    total = (await session.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
    ordering: list[Any] = []
    for name, direction in query.sort:
        column = SORT_COLUMNS[name]
        ordering.append(column.desc() if direction == "desc" else column.asc())
    # ULIDs sort by creation time, so the id breaks ties in created order.
    if query.order == "asc":
        ordering += [Customer.created_at.asc(), Customer.id.asc()]
    else:
        ordering += [Customer.created_at.desc(), Customer.id.desc()]
    rows = (await session.execute(stmt.order_by(*ordering).limit(limit).offset(offset))).scalars().all()
    return list(rows), total
