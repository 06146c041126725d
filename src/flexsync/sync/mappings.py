"""A customer's Stripe link as FlexPrice shows it: an entity integration mapping.

The mapping is the very `customer_links` row the sync keeps (sync/links.py): one table, read here in
FlexPrice's shape for `GET /v1/integrations/mappings`, `POST /v1/integrations/link` and the customers'
`expand=integrations`. Only links of the environment's live Stripe connection count, as for the sync itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.connections.repository import get_live_connection
from flexsync.models import Customer, CustomerLink

# Who made a link that no API key made: the sync (inbound, outbound, reconciliation).
SYNC_ACTOR = "system"


def mapping_to_dict(link: CustomerLink, customer: Customer) -> dict[str, Any]:
    author = link.created_by or SYNC_ACTOR
    return {
        "id": link.id,
        "entity_id": customer.id,
        "entity_type": "customer",
        "provider_type": "stripe",
        "provider_entity_id": link.stripe_customer_id,
        "environment_id": customer.environment_id,
        "tenant_id": customer.tenant_id,
        # A link that only remembers a Stripe customer deleted in Stripe is no live mapping.
        "status": "published" if link.status == "linked" else "archived",
        "metadata": dict(link.metadata_ or {}),
        "created_at": link.created_at,
        "updated_at": link.updated_at,
        "created_by": author,
        "updated_by": author,
    }


async def mappings_of(session: AsyncSession, customers: Sequence[Customer]) -> dict[str, list[dict[str, Any]]]:
    """The mappings of customers of one environment, by customer id (every customer present, most have none)."""
    found: dict[str, list[dict[str, Any]]] = {customer.id: [] for customer in customers}
    if not customers:
        return found
    first = customers[0]
    connection = await get_live_connection(session, first.tenant_id, first.environment_id)
    if connection is None:
        return found
    by_id = {customer.id: customer for customer in customers}
    stmt = select(CustomerLink).where(
        CustomerLink.connection_id == connection.id, CustomerLink.customer_id.in_(list(by_id))
    )
    for link in (await session.execute(stmt)).scalars():
        found[link.customer_id].append(mapping_to_dict(link, by_id[link.customer_id]))
    return found
