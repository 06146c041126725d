"""Every customer query, always scoped to one tenant and environment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, false, func, literal, or_, select, type_coerce
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from flexsync.models import Customer
from flexsync.tenancy.service import Scope


@dataclass(frozen=True, slots=True)
class Condition:
    """One checked FlexPrice filter condition (customers.search): a column, an operator, a value of its kind."""

    field: str
    operator: str
    value: str | list[str] | datetime


@dataclass(slots=True)
class CustomerQuery:
    status: str = "published"
    customer_ids: Sequence[str] | None = None
    external_ids: Sequence[str] | None = None
    parent_customer_ids: Sequence[str] | None = None
    email: str | None = None
    # Every pair must be in the customer's metadata.
    metadata: Mapping[str, str] | None = None
    conditions: list[Condition] = field(default_factory=list)
    created_from: datetime | None = None
    created_to: datetime | None = None
    sort: list[tuple[str, str]] = field(default_factory=list)
    order: str = "desc"


def _column(name: str) -> InstrumentedAttribute[Any]:
    column: InstrumentedAttribute[Any] = getattr(Customer, name)
    return column


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


def _metadata_has(pairs: Mapping[str, str], dialect: str) -> ColumnElement[bool]:
    if dialect == "postgresql":
        # JSONB containment, which the GIN index on metadata answers.
        return type_coerce(Customer.metadata_, JSONB).contains(dict(pairs))
    # SQLite: each pair looked up with json_each, whose keys need no quoting in a JSON path.
    matches = []
    for key, value in pairs.items():
        entries = func.json_each(Customer.metadata_).table_valued("key", "value")
        matches.append(
            select(literal(1)).select_from(entries).where(entries.c.key == key, entries.c.value == value).exists()
        )
    return and_(*matches)


def _matches(condition: Condition) -> ColumnElement[bool]:
    column, value = _column(condition.field), condition.value
    if condition.operator == "eq":
        return column == value
    if condition.operator == "contains":
        return column.icontains(value, autoescape=True)
    if condition.operator == "not_contains":
        # A customer without the field does not contain the text either.
        return or_(column.is_(None), ~column.icontains(value, autoescape=True))
    if isinstance(value, list):  # `in` and `not_in`, the operators that take an array
        found = column.in_(value)
        return found if condition.operator == "in" else or_(column.is_(None), ~found)
    comparisons = {
        "before": column < value,
        "lt": column < value,
        "after": column > value,
        "gt": column > value,
        "gte": column >= value,
    }
    return comparisons[condition.operator]


def _filtered(scope: Scope, query: CustomerQuery, dialect: str) -> Select[Customer]:
    stmt = _scoped(scope)
    if query.status == "deleted":
        stmt = stmt.where(false())
    elif query.status != "all":
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
    if query.metadata:
        stmt = stmt.where(_metadata_has(query.metadata, dialect))
    for condition in query.conditions:
        stmt = stmt.where(_matches(condition))
    return stmt


async def list_page(
    session: AsyncSession, scope: Scope, query: CustomerQuery, limit: int, offset: int
) -> tuple[list[Customer], int]:
    dialect = session.get_bind().dialect.name
    stmt = _filtered(scope, query, dialect)
    total = (await session.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
    ordering: list[Any] = []
    for name, direction in query.sort:
        column = _column(name)
        ordered = column.desc() if direction == "desc" else column.asc()
        # Where customers without the field go: as PostgreSQL puts them (last going up, first going down).
        if dialect == "sqlite":
            ordered = ordered.nulls_first() if direction == "desc" else ordered.nulls_last()
        ordering.append(ordered)
    # ULIDs sort by creation time, so the id breaks ties in created order.
    if query.order == "asc":
        ordering += [Customer.created_at.asc(), Customer.id.asc()]
    else:
        ordering += [Customer.created_at.desc(), Customer.id.desc()]
    rows = (await session.execute(stmt.order_by(*ordering).limit(limit).offset(offset))).scalars().all()
    return list(rows), total
