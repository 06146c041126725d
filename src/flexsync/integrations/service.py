"""Linking and unlinking a customer and a Stripe customer through FlexPrice's integrations API.

A link made here is the sync's own link (`customer_links`, through sync/links.py): afterwards the customer
is pushed to, and updated from, that Stripe customer exactly as one the sync linked. Linking checks the
Stripe customer through StripeCaller and stamps it with `metadata.flexprice_customer_id`, as the
`integration_entity_mapping` of a new customer does; nothing else in Stripe changes, and unlinking changes
nothing there.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.connections.accounts import stripe_account
from flexsync.connections.repository import get_live_connection
from flexsync.context import AppContext
from flexsync.customers import repository as customers
from flexsync.ids import new_id
from flexsync.integrations.schemas import DelinkRequest, LinkRequest
from flexsync.kit.errors import AlreadyExists, NotFound, ValidationFailed
from flexsync.models import Customer, CustomerLink, StripeConnection, utcnow
from flexsync.stripe.calls import StripeCaller, StripeCallFailed
from flexsync.stripe.customers import StripeCustomerMissing, adopt
from flexsync.stripe.mapping import from_stripe
from flexsync.sync import links
from flexsync.sync.mappings import mapping_to_dict, mappings_of
from flexsync.tenancy.service import Scope


async def _customer(session: AsyncSession, scope: Scope, customer_id: str, *, for_update: bool = False) -> Customer:
    customer = await customers.get(session, scope, customer_id, for_update=for_update)
    if customer is None:
        raise NotFound(f"customer {customer_id} not found", {"fields": {"entity_id": "not found"}})
    return customer


async def _connection(session: AsyncSession, scope: Scope) -> StripeConnection:
    connection = await get_live_connection(session, scope.tenant_id, scope.environment_id)
    if connection is None or connection.status != "active":
        raise ValidationFailed(
            "this environment has no active Stripe connection: add one (POST /v1/connections) before linking",
            {"fields": {"provider_type": "no active Stripe connection"}},
        )
    return connection


def _conflict(existing: CustomerLink, customer_id: str, stripe_customer_id: str) -> AlreadyExists:
    if existing.customer_id == customer_id:
        message = f"customer {customer_id} is already linked to Stripe customer {existing.stripe_customer_id}"
    else:
        message = f"Stripe customer {stripe_customer_id} is already linked to customer {existing.customer_id}"
    return AlreadyExists(
        message, {"customer_id": existing.customer_id, "provider_entity_id": existing.stripe_customer_id}
    )


async def link(db: AppContext, caller: StripeCaller, scope: Scope, request: LinkRequest, actor: str) -> dict[str, Any]:
    """Link, and answer the mapping; linking what is linked already answers the same mapping again."""
    stripe_id = request.provider_entity_id
    async with db.read() as session:
        customer = await _customer(session, scope, request.entity_id)
        if customer.status != "published":
            raise ValidationFailed(f"customer {customer.id} is archived and cannot be linked")
        connection = await _connection(session, scope)
        held = await links.holding_either(session, connection.id, customer.id, stripe_id)
        try:
            existing = links.made_already(held, customer.id, stripe_id)
        except links.LinkConflict as conflict:
            raise _conflict(conflict.existing, customer.id, stripe_id) from None
        if existing is not None:
            return mapping_to_dict(existing, customer)
        account = stripe_account(connection, db.box, db.settings)

    # The Stripe requests run outside any transaction.
    try:
        adopted = await adopt(caller, account, stripe_id, customer.id, f"flexsync:link:{customer.id}:{new_id('req')}")
    except StripeCustomerMissing as missing:
        raise ValidationFailed(missing.message, {"fields": {"provider_entity_id": "no such Stripe customer"}}) from None
    except StripeCallFailed as failure:
        # As when a connection's key is verified: the request names what went wrong in Stripe, a 400.
        advice = "; nothing was linked, try again" if failure.retryable else "; nothing was linked"
        raise ValidationFailed(failure.message + advice, {"fields": {"provider_entity_id": "Stripe error"}}) from None

    now = utcnow()
    async with db.transaction() as session:
        customer = await _customer(session, scope, request.entity_id, for_update=True)
        if customer.status != "published":
            raise ValidationFailed(f"customer {customer.id} was archived meanwhile and is not linked")
        values = {
            "pushed_snapshot": from_stripe(adopted).fields,
            "last_synced_at": now,
            "metadata_": dict(request.metadata or {}),
            "created_by": actor,
        }
        try:
            made = await links.link_anew(session, connection.id, customer, stripe_id, values=values)
        except links.LinkConflict as conflict:
            raise _conflict(conflict.existing, customer.id, stripe_id) from None
        return mapping_to_dict(made, customer)


async def unlink(db: AppContext, scope: Scope, request: DelinkRequest) -> None:
    async with db.transaction() as session:
        customer = await _customer(session, scope, request.entity_id, for_update=True)
        connection = await get_live_connection(session, scope.tenant_id, scope.environment_id)
        found = await links.by_customer(session, connection.id, customer.id) if connection is not None else None
        if found is None:
            raise NotFound(
                f"customer {customer.id} has no Stripe mapping to delink",
                {"entity_id": customer.id, "entity_type": "customer", "provider_type": "stripe"},
            )
        await links.unlink(session, found, customer)


async def mappings(db: AppContext, scope: Scope, entity_type: str, entity_id: str) -> list[dict[str, Any]]:
    """The entity's mappings: a customer's Stripe link, if it has one; other entity types have none."""
    if entity_type != "customer":
        return []
    async with db.read() as session:
        customer = await customers.get(session, scope, entity_id)
        if customer is None:
            return []
        return (await mappings_of(session, [customer]))[customer.id]
