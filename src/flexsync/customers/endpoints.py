"""HTTP endpoints of the FlexPrice-compatible customer API (`/v1/customers`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from flexsync.customers import repository, service
from flexsync.customers.repository import CustomerQuery
from flexsync.customers.schemas import (
    Customer,
    CustomerCreate,
    CustomerList,
    CustomerSearch,
    CustomerStatusFilter,
    CustomerSyncStatus,
    CustomerUpdate,
    SyncRequested,
)
from flexsync.customers.search import customer_query, parse_expand
from flexsync.deps import DB, AuthScope
from flexsync.kit.errors import NotFound, ValidationFailed
from flexsync.kit.json import JSONResponse
from flexsync.kit.openapi import API_KEY_REQUIRED, errors
from flexsync.kit.pagination import Page, PageQuery, page_body
from flexsync.sync import outbound
from flexsync.sync import status as sync_status

router = APIRouter(prefix="/v1/customers", tags=["customers"], responses=API_KEY_REQUIRED)

ALREADY_EXISTS = (
    409,
    "already_exists: another published customer has this external_id, or the Stripe customer named in "
    "integration_entity_mapping is linked to another customer",
)


ExpandQuery = Annotated[
    str | None, Query(description="`integrations`: the customer's Stripe link, as FlexPrice's mappings.")
]


@router.post("", status_code=201, response_model=Customer, responses=errors(ALREADY_EXISTS))
async def create_customer(body: CustomerCreate, scope: AuthScope, db: DB) -> JSONResponse:
    async with db.transaction() as session:
        customer = await service.create_customer(session, scope, body, actor=scope.api_key_id)
        payload = service.customer_to_dict(customer)
    return JSONResponse(payload, status_code=201)


@router.get("", response_model=CustomerList)
async def list_customers(
    scope: AuthScope,
    db: DB,
    page: PageQuery,
    external_id: str | None = None,
    email: str | None = None,
    status: CustomerStatusFilter = "published",
) -> JSONResponse:
    query = CustomerQuery(
        status=status,
        external_ids=[external_id] if external_id is not None else None,
        email=email,
    )
    async with db.read() as session:
        items, total = await repository.list_page(session, scope, query, page.limit, page.offset)
        return JSONResponse(page_body([service.customer_to_dict(c) for c in items], total, page))


@router.post(
    "/search",
    response_model=CustomerList,
    responses=errors((400, "validation_error: also for a filter, sort or expand naming what customers lack")),
)
async def search_customers(body: CustomerSearch, scope: AuthScope, db: DB) -> JSONResponse:
    """FlexPrice's customer query. `filters` conditions name a customer field, an operator and a value of the
    `data_type` it takes: on text fields `eq`, `contains`, `not_contains` (any case) with `value.string`, and
    `in`, `not_in` with `value.array`; on `created_at` and `updated_at` `eq`, `before`, `after`, `lt`, `gt`,
    `gte` with `value.date`. `sort` conditions apply in order, then `order` by creation."""
    query = customer_query(body)
    expand = parse_expand(body.expand)
    async with db.read() as session:
        items, total = await repository.list_page(session, scope, query, body.limit, body.offset)
        page = Page(limit=body.limit, offset=body.offset)
        return JSONResponse(page_body(await service.customers_to_dicts(session, items, expand), total, page))


@router.get("/external/{external_id}", response_model=Customer, responses=errors(404))
async def get_customer_by_external_id(
    external_id: str, scope: AuthScope, db: DB, expand: ExpandQuery = None
) -> JSONResponse:
    expanded = parse_expand(expand)
    async with db.read() as session:
        customer = await repository.get_published_by_external_id(session, scope, external_id)
        if customer is None:
            raise NotFound(f"customer with external_id {external_id!r} not found")
        return JSONResponse((await service.customers_to_dicts(session, [customer], expanded))[0])


@router.get("/{customer_id}", response_model=Customer, responses=errors(404))
async def get_customer(customer_id: str, scope: AuthScope, db: DB, expand: ExpandQuery = None) -> JSONResponse:
    expanded = parse_expand(expand)
    async with db.read() as session:
        customer = await repository.get(session, scope, customer_id)
        if customer is None:
            raise NotFound(f"customer {customer_id} not found")
        return JSONResponse((await service.customers_to_dicts(session, [customer], expanded))[0])


async def _update(
    db: DB, scope: AuthScope, body: CustomerUpdate, *, customer_id: str | None, external_id: str | None
) -> JSONResponse:
    async with db.transaction() as session:
        customer = await service.find_for_update(session, scope, customer_id=customer_id, external_id=external_id)
        await service.update_customer(session, scope, customer, body, actor=scope.api_key_id)
        payload = service.customer_to_dict(customer)
    return JSONResponse(payload)


@router.put("/{customer_id}", response_model=Customer, responses=errors(404, ALREADY_EXISTS))
async def update_customer(customer_id: str, body: CustomerUpdate, scope: AuthScope, db: DB) -> JSONResponse:
    return await _update(db, scope, body, customer_id=customer_id, external_id=None)


@router.put(
    "",
    response_model=Customer,
    responses=errors(
        (400, "validation_error: also when neither or both of the query parameters are given"), 404, ALREADY_EXISTS
    ),
)
async def update_customer_by_query(
    body: CustomerUpdate,
    scope: AuthScope,
    db: DB,
    id: Annotated[str | None, Query(description="The customer's id; give this or `external_customer_id`.")] = None,
    external_customer_id: Annotated[
        str | None, Query(description="The published customer's external_id; give this or `id`.")
    ] = None,
) -> JSONResponse:
    """FlexPrice's form of the partial update: the customer named by exactly one of the query parameters."""
    if (id is None) == (external_customer_id is None):
        raise ValidationFailed("give exactly one of the query parameters id or external_customer_id")
    return await _update(db, scope, body, customer_id=id, external_id=external_customer_id)


@router.post("/{customer_id}/sync-to-stripe", status_code=202, response_model=SyncRequested, responses=errors(404))
async def sync_customer_to_stripe(customer_id: str, scope: AuthScope, db: DB) -> JSONResponse:
    """Create the customer in Stripe if unlinked, else update it there; runs as a job (202)."""
    async with db.transaction() as session:
        customer = await service.find_for_update(session, scope, customer_id=customer_id)
        job = await outbound.request_sync(session, customer)
        body = {"job_id": job.id, "status": job.status}
    return JSONResponse(body, status_code=202)


@router.get("/{customer_id}/sync", response_model=CustomerSyncStatus, responses=errors(404))
async def get_customer_sync(customer_id: str, scope: AuthScope, db: DB) -> JSONResponse:
    """The customer's Stripe link and outbound sync state: Stripe id, last synced, last error, pending jobs."""
    async with db.read() as session:
        customer = await repository.get(session, scope, customer_id)
        if customer is None:
            raise NotFound(f"customer {customer_id} not found")
        return JSONResponse(await sync_status.sync_status(session, customer))


@router.delete("/{customer_id}", status_code=204, responses=errors(404))
async def delete_customer(customer_id: str, scope: AuthScope, db: DB) -> Response:
    async with db.transaction() as session:
        customer = await service.find_for_update(session, scope, customer_id=customer_id)
        await service.archive_customer(session, customer, actor=scope.api_key_id)
    return Response(status_code=204)
