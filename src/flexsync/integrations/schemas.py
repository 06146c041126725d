"""Request and response bodies of FlexPrice's integration mapping operations."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints

from flexsync.customers.schemas import EntityType, IntegrationMapping, ProviderType, StripeCustomerId
from flexsync.kit.pagination import ListPage
from flexsync.kit.schemas import ResponseModel, StrictModel

EntityId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]


def _customers_only(value: str) -> str:
    if value != "customer":
        raise ValueError(f"flexsync keeps the mappings of customers only, not of {value} entities")
    return value


def _stripe_only(value: str) -> str:
    if value.lower() != "stripe":
        raise ValueError(f"flexsync keeps Stripe mappings only, not {value} ones")
    return "stripe"


CustomerEntity = Annotated[EntityType, AfterValidator(_customers_only)]
StripeProvider = Annotated[ProviderType, AfterValidator(_stripe_only)]


class LinkRequest(StrictModel):
    """Link a customer (`entity_id`, its id) to an existing Stripe customer (`provider_entity_id`)."""

    entity_id: EntityId
    entity_type: CustomerEntity
    provider_type: StripeProvider
    provider_entity_id: StripeCustomerId
    metadata: dict[str, Any] | None = Field(default=None, description="Kept on the mapping and returned.")


class DelinkRequest(StrictModel):
    entity_id: EntityId
    entity_type: CustomerEntity
    provider_type: StripeProvider


class LinkResponse(ResponseModel):
    mapping: IntegrationMapping


class DelinkResponse(ResponseModel):
    message: str


class MappingList(ListPage[IntegrationMapping]):
    pass
