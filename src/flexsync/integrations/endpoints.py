"""HTTP endpoints of FlexPrice's integration mappings (`/v1/integrations`), for customers and Stripe."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from flexsync.customers.schemas import EntityType
from flexsync.deps import DB, AuthScope
from flexsync.integrations import service
from flexsync.integrations.schemas import DelinkRequest, DelinkResponse, LinkRequest, LinkResponse, MappingList
from flexsync.kit.json import JSONResponse
from flexsync.kit.openapi import API_KEY_REQUIRED, errors
from flexsync.kit.pagination import PageQuery, page_body
from flexsync.stripe.calls import StripeCaller

router = APIRouter(prefix="/v1/integrations", tags=["integrations"], responses=API_KEY_REQUIRED)


def stripe_caller(request: Request) -> StripeCaller:
    caller: StripeCaller = request.app.state.stripe_caller
    return caller


@router.post(
    "/link",
    response_model=LinkResponse,
    responses=errors(
        (
            400,
            "validation_error: also when the Stripe customer does not exist, Stripe cannot be reached or refuses, "
            "or the environment has no Stripe connection; nothing is linked",
        ),
        404,
        (409, "already_exists: the customer or the Stripe customer is linked to another"),
    ),
)
async def link_integration_mapping(
    body: LinkRequest, scope: AuthScope, db: DB, caller: Annotated[StripeCaller, Depends(stripe_caller)]
) -> JSONResponse:
    """Link a customer to an existing Stripe customer, which is checked in Stripe and stamped with
    `metadata.flexprice_customer_id`. The link is the sync's own: changes flow both ways from then on."""
    mapping = await service.link(db, caller, scope, body, actor=scope.api_key_id)
    return JSONResponse({"mapping": mapping})


@router.delete("/link", response_model=DelinkResponse, responses=errors(404))
async def delink_integration_mapping(body: DelinkRequest, scope: AuthScope, db: DB) -> JSONResponse:
    """Unlink the customer from its Stripe customer, which keeps all its data."""
    await service.unlink(db, scope, body)
    return JSONResponse({"message": "integration mapping delinked"})


@router.get("/mappings", response_model=MappingList)
async def get_entity_integration_mappings(
    scope: AuthScope,
    db: DB,
    page: PageQuery,
    entity_type: Annotated[EntityType, Query(description="flexsync keeps mappings of customers only.")],
    entity_id: Annotated[str, Query(description="The customer's id.")],
) -> JSONResponse:
    """The entity's mappings: a customer's Stripe link, if it has one; other entity types have none."""
    items = await service.mappings(db, scope, entity_type, entity_id)
    shown = items[page.offset : page.offset + page.limit]
    return JSONResponse(page_body(shown, len(items), page))
