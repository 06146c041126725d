"""The link between a flexsync customer and a Stripe customer, used by inbound, outbound, reconcile and
FlexPrice's integrations API.

A link is a row in `customer_links` (unique on both sides per connection) mirrored into the customer's
`metadata.stripe_customer_id`. Concurrent linkers (a webhook and the worker racing over one new customer)
are settled by the unique constraints: the loser sees the winner's row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.ids import new_id
from flexsync.models import Customer, CustomerLink, utcnow
from flexsync.stripe.mapping import STRIPE_ID_KEY


class LinkConflict(Exception):
    """The customer or the Stripe customer is already linked to someone else."""

    def __init__(self, message: str, existing: CustomerLink):
        super().__init__(message)
        self.existing = existing


async def by_stripe_id(session: AsyncSession, connection_id: str, stripe_customer_id: str) -> CustomerLink | None:
    stmt = select(CustomerLink).where(
        CustomerLink.connection_id == connection_id, CustomerLink.stripe_customer_id == stripe_customer_id
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def by_customer(session: AsyncSession, connection_id: str, customer_id: str) -> CustomerLink | None:
    stmt = select(CustomerLink).where(
        CustomerLink.connection_id == connection_id, CustomerLink.customer_id == customer_id
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def by_customers(
    session: AsyncSession, connection_id: str, customer_ids: Sequence[str]
) -> dict[str, CustomerLink]:
    """The links of many customers at once, by customer id."""
    stmt = select(CustomerLink).where(
        CustomerLink.connection_id == connection_id, CustomerLink.customer_id.in_(customer_ids)
    )
    return {link.customer_id: link for link in (await session.execute(stmt)).scalars()}


def _mirror_into_metadata(customer: Customer, stripe_customer_id: str | None) -> None:
    metadata = dict(customer.metadata_ or {})
    if stripe_customer_id is None:
        metadata.pop(STRIPE_ID_KEY, None)
    else:
        metadata[STRIPE_ID_KEY] = stripe_customer_id
    if metadata != customer.metadata_:
        customer.metadata_ = metadata
        customer.updated_at = utcnow()


async def holding_either(
    session: AsyncSession, connection_id: str, customer_id: str, stripe_customer_id: str
) -> list[CustomerLink]:
    """The links that hold the customer or the Stripe customer (at most two, one query), the customer's first."""
    stmt = select(CustomerLink).where(
        CustomerLink.connection_id == connection_id,
        or_(CustomerLink.customer_id == customer_id, CustomerLink.stripe_customer_id == stripe_customer_id),
    )
    found = (await session.execute(stmt)).scalars().all()
    return sorted(found, key=lambda held: held.customer_id != customer_id)


async def link(
    session: AsyncSession,
    connection_id: str,
    customer: Customer,
    stripe_customer_id: str,
    *,
    held: Sequence[CustomerLink] | None = None,
    values: Mapping[str, Any] | None = None,
) -> CustomerLink:
    """Link, or return the identical existing link. Raises LinkConflict if either side is linked elsewhere.

    `held`: what `holding_either` found for these two in this transaction, when the caller has looked already.
    `values`: more columns of a new link (what the caller sets on the link it gets back, so that a new one is
    written once).
    """
    if held is None:
        held = await holding_either(session, connection_id, customer.id, stripe_customer_id)
    if held:
        return _the_same_link(held[0], customer, stripe_customer_id)
    row = {
        "id": new_id("link"),
        "connection_id": connection_id,
        "customer_id": customer.id,
        "stripe_customer_id": stripe_customer_id,
        "status": "linked",
        "last_synced_at": utcnow(),
        **(values or {}),
    }
    # A link taken meanwhile is skipped by the insert itself, rather than failing it inside a savepoint: one
    # round trip instead of three.
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert(CustomerLink).values(row).on_conflict_do_nothing().returning(CustomerLink)
    created = (await session.scalars(statement)).first()
    if created is not None:
        _mirror_into_metadata(customer, stripe_customer_id)
        return created
    # Someone linked one side between our check and our insert: report what they linked.
    held = await holding_either(session, connection_id, customer.id, stripe_customer_id)
    if not held:
        raise RuntimeError("a link of this customer or Stripe customer came and went while linking; try again")
    return _the_same_link(held[0], customer, stripe_customer_id)


def _the_same_link(existing: CustomerLink, customer: Customer, stripe_customer_id: str) -> CustomerLink:
    """An existing link that holds one side: the very link wanted (returned), or a LinkConflict."""
    if existing.customer_id == customer.id and existing.stripe_customer_id == stripe_customer_id:
        _mirror_into_metadata(customer, stripe_customer_id)
        return existing
    raise LinkConflict(
        f"customer {existing.customer_id} is already linked to Stripe customer {existing.stripe_customer_id}",
        existing,
    )


def made_already(held: Sequence[CustomerLink], customer_id: str, stripe_customer_id: str) -> CustomerLink | None:
    """Among `holding_either`'s links, the one wanted if it is made already; a LinkConflict if either side is
    linked elsewhere. A link to a Stripe customer deleted in Stripe counts for nothing: it makes way."""
    for existing in held:
        if existing.status != "linked":
            continue
        if existing.customer_id == customer_id and existing.stripe_customer_id == stripe_customer_id:
            return existing
        raise LinkConflict(
            f"customer {existing.customer_id} is already linked to Stripe customer {existing.stripe_customer_id}",
            existing,
        )
    return None


async def link_anew(
    session: AsyncSession,
    connection_id: str,
    customer: Customer,
    stripe_customer_id: str,
    *,
    values: Mapping[str, Any] | None = None,
) -> CustomerLink:
    """`link`, once the customer's link to a Stripe customer deleted in Stripe, if any, has made way."""
    held = await holding_either(session, connection_id, customer.id, stripe_customer_id)
    dead = [h for h in held if h.customer_id == customer.id and h.status != "linked"]
    for stale in dead:
        await unlink(session, stale, customer)
    live = [h for h in held if h not in dead]
    return await link(session, connection_id, customer, stripe_customer_id, held=live, values=values)


async def unlink(session: AsyncSession, link_row: CustomerLink, customer: Customer | None) -> None:
    await session.delete(link_row)
    if customer is not None:
        _mirror_into_metadata(customer, None)
    await session.flush()
