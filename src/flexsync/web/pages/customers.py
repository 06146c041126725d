"""Customers: the searchable list with Stripe link status, a customer's page, and the create/edit forms."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import RedirectResponse, Response

from flexsync.connections.repository import get_live_connection
from flexsync.customers import repository, service
from flexsync.customers.schemas import SYNC_OWNED_METADATA_KEYS, CustomerCreate, CustomerUpdate
from flexsync.deps import DB
from flexsync.jobs import repository as jobs_repository
from flexsync.kit.errors import APIError, NotFound
from flexsync.kit.pagination import PageNumber, page_count
from flexsync.models import Customer
from flexsync.sync import outbound
from flexsync.sync import status as sync_status
from flexsync.web import forms, queries
from flexsync.web.auth import PostedForm, SignedIn, Viewer
from flexsync.web.render import render

router = APIRouter()

PAGE_SIZE = 25
# How many of a customer's latest sync jobs and webhook events its page lists.
RECENT_ACTIVITY = 20


@router.get("/customers")
async def customer_list(
    request: Request,
    viewer: SignedIn,
    db: DB,
    q: Annotated[str, Query(max_length=255)] = "",
    status: Literal["published", "archived", "all"] = "published",
    page: PageNumber = 1,
) -> Response:
    scope = viewer.scope
    async with db.read() as session:
        customers, total = await queries.search_customers(session, scope, q, status, PAGE_SIZE, (page - 1) * PAGE_SIZE)
        connection = await get_live_connection(session, scope.tenant_id, scope.environment_id)
        states = await queries.sync_states(session, customers)
    pages = page_count(total, PAGE_SIZE)
    return render(
        request,
        "customers/list.html",
        viewer,
        {
            "customers": customers,
            "states": states,
            "total": total,
            "q": q,
            "status": status,
            "page": page,
            "pages": pages,
            "connection": connection,
        },
        nav="customers",
    )


def _form_page(
    request: Request, viewer: Viewer, state: forms.FormState, customer: Customer | None, status_code: int = 200
) -> Response:
    return render(
        request,
        "customers/form.html",
        viewer,
        {
            "state": state,
            "customer": customer,
            "fields": forms.CUSTOMER_FIELDS,
            "labels": forms.CUSTOMER_LABELS,
            "sync_metadata": {
                k: v for k, v in (customer.metadata_ if customer else {}).items() if k in SYNC_OWNED_METADATA_KEYS
            },
        },
        nav="customers",
        status_code=status_code,
    )


@router.get("/customers/new")
async def new_customer_form(request: Request, viewer: SignedIn) -> Response:
    return _form_page(request, viewer, forms.FormState(), None)


@router.post("/customers/new")
async def create_customer(request: Request, viewer: SignedIn, form: PostedForm, db: DB) -> Response:
    state, body = forms.customer_form(form)
    data = forms.build(CustomerCreate, body, state)
    if data is None:
        return _form_page(request, viewer, state, None, status_code=400)
    try:
        async with db.transaction() as session:
            customer = await service.create_customer(session, viewer.scope, data, actor=viewer.scope.api_key_id)
    except APIError as exc:
        state.errors.update(forms.api_errors(exc))
        return _form_page(request, viewer, state, None, status_code=exc.status)
    return RedirectResponse(f"/customers/{customer.id}?notice=customer-created", status_code=303)


async def _load(db: DB, viewer: Viewer, customer_id: str) -> Customer:
    async with db.read() as session:
        customer = await repository.get(session, viewer.scope, customer_id)
    if customer is None:
        raise NotFound(f"customer {customer_id} not found")
    return customer


@router.get("/customers/{customer_id}")
async def customer_page(request: Request, customer_id: str, viewer: SignedIn, db: DB) -> Response:
    scope = viewer.scope
    async with db.read() as session:
        customer = await repository.get(session, scope, customer_id)
        if customer is None:
            raise NotFound(f"customer {customer_id} not found")
        connection = await get_live_connection(session, scope.tenant_id, scope.environment_id)
        state = queries.sync_state(await sync_status.sync_status(session, customer))
        jobs, _total = await jobs_repository.list_page(
            session, scope, status=None, customer_id=customer.id, limit=RECENT_ACTIVITY, offset=0
        )
        events = await queries.customer_events(session, scope, customer.id, RECENT_ACTIVITY)
    return render(
        request,
        "customers/detail.html",
        viewer,
        {
            "customer": customer,
            "state": state,
            "connection": connection,
            "jobs": jobs,
            "events": events,
            "fields": forms.CUSTOMER_FIELDS,
        },
        nav="customers",
    )


@router.get("/customers/{customer_id}/edit")
async def edit_customer_form(request: Request, customer_id: str, viewer: SignedIn, db: DB) -> Response:
    customer = await _load(db, viewer, customer_id)
    values = {f.name: getattr(customer, f.name) or "" for f in forms.CUSTOMER_FIELDS}
    values[forms.METADATA_FIELD] = forms.metadata_text(customer.metadata_ or {})
    return _form_page(request, viewer, forms.FormState(values=values), customer)


@router.post("/customers/{customer_id}/edit")
async def update_customer(request: Request, customer_id: str, viewer: SignedIn, form: PostedForm, db: DB) -> Response:
    customer = await _load(db, viewer, customer_id)
    state, body = forms.customer_form(form)
    data = forms.build(CustomerUpdate, body, state)
    if data is None:
        return _form_page(request, viewer, state, customer, status_code=400)
    try:
        async with db.transaction() as session:
            locked = await service.find_for_update(session, viewer.scope, customer_id=customer_id)
            await service.update_customer(session, viewer.scope, locked, data, actor=viewer.scope.api_key_id)
    except APIError as exc:
        state.errors.update(forms.api_errors(exc))
        return _form_page(request, viewer, state, customer, status_code=exc.status)
    return RedirectResponse(f"/customers/{customer_id}?notice=customer-saved", status_code=303)


@router.post("/customers/{customer_id}/archive")
async def archive_customer(customer_id: str, viewer: SignedIn, _form: PostedForm, db: DB) -> Response:
    async with db.transaction() as session:
        customer = await service.find_for_update(session, viewer.scope, customer_id=customer_id)
        await service.archive_customer(session, customer, actor=viewer.scope.api_key_id)
    return RedirectResponse(f"/customers/{customer_id}?notice=customer-archived", status_code=303)


@router.post("/customers/{customer_id}/sync")
async def sync_to_stripe(customer_id: str, viewer: SignedIn, _form: PostedForm, db: DB) -> Response:
    """The API's sync-to-stripe: create the Stripe customer if unlinked, else update it (runs as a job)."""
    async with db.transaction() as session:
        customer = await service.find_for_update(session, viewer.scope, customer_id=customer_id)
        await outbound.request_sync(session, customer)
    return RedirectResponse(f"/customers/{customer_id}?notice=sync-queued", status_code=303)
