"""Settings > Integrations: the environment's Stripe connection, its webhook endpoint and its health."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from flexsync.connections import catch_up, managed_endpoint, repository, secrets, service
from flexsync.connections.schemas import ConnectionCreate, ConnectionUpdate
from flexsync.connections.settings import effective_settings
from flexsync.deps import DB
from flexsync.kit.errors import APIError, ValidationFailed
from flexsync.models import StripeConnection
from flexsync.sync import health as delivery_health
from flexsync.web import forms, queries
from flexsync.web.auth import PostedForm, SignedIn, Viewer
from flexsync.web.render import render

router = APIRouter()

PAGE = "/settings/integrations"
STRIPE_EVENTS = ("customer.created", "customer.updated", "customer.deleted")


async def _page(
    request: Request,
    viewer: Viewer,
    db: DB,
    *,
    state: forms.FormState | None = None,
    typed_settings: dict[str, Any] | None = None,
    test_result: tuple[bool, str] | None = None,
    endpoint_result: str | None = None,
    status_code: int = 200,
) -> Response:
    scope = viewer.scope
    async with db.read() as session:
        connection = await repository.get_live_connection(session, scope.tenant_id, scope.environment_id)
        health = await queries.health(session, scope)
        endpoint = await managed_endpoint.shown(session, connection)
        catch_up_view = await catch_up.view(session, connection) if connection is not None else None
        last_webhook_at = await delivery_health.last_webhook_at(session, scope.environment_id)
    if state is None:
        values = {"name": connection.name, "publishable_key": connection.publishable_key} if connection else {}
        state = forms.FormState(values=values)
    # After a refused submit the switches stay as the user set them; otherwise they show the stored settings.
    current = typed_settings or effective_settings(connection.settings if connection else None).model_dump()
    return render(
        request,
        "integrations.html",
        viewer,
        {
            "connection": connection,
            "health": health,
            "catch_up": catch_up_view,
            "catch_up_lagging": catch_up_view is not None
            and delivery_health.lagging(catch_up_view["lag_seconds"], db.settings.stripe_catchup_interval_seconds),
            "last_webhook_at": last_webhook_at,
            "state": state,
            "settings": current,
            "test_result": test_result,
            "webhook_endpoint": endpoint,
            "endpoint_result": endpoint_result,
            # Only the last four characters are stored in the clear; sk_ or rk_ is not known without decrypting.
            "secret_key_mask": f"••••••••{connection.secret_key_last4}" if connection else "",
            "webhook_url": db.settings.webhook_url(scope.tenant_id, scope.environment_id),
            "events": STRIPE_EVENTS,
            "name_field": forms.CONNECTION_NAME,
            "publishable_field": forms.PUBLISHABLE_KEY,
            "secret_fields": forms.secret_fields(editing=connection is not None),
            "switches": forms.SWITCHES,
            "choices": forms.CHOICES,
            "labels": forms.CONNECTION_LABELS,
        },
        nav="integrations",
        status_code=status_code,
    )


@router.get(PAGE)
async def integrations_page(request: Request, viewer: SignedIn, db: DB) -> Response:
    return await _page(request, viewer, db)


@router.post(PAGE)
async def add_connection(request: Request, viewer: SignedIn, form: PostedForm, db: DB) -> Response:
    state, body = forms.connection_form(form, editing=False)
    data = forms.build(ConnectionCreate, body, state)
    if data is None:
        return await _page(request, viewer, db, state=state, typed_settings=body["settings"], status_code=400)
    try:
        verified = await service.verify_with_stripe(data.secret_key.get_secret_value(), db) if data.verify else None
        await managed_endpoint.create_connection(db, viewer.scope, data, verified)
    except APIError as exc:
        state.errors.update(forms.api_errors(exc))
        return await _page(request, viewer, db, state=state, typed_settings=body["settings"], status_code=exc.status)
    return RedirectResponse(f"{PAGE}?notice=connection-created", status_code=303)


async def _stored_key(db: DB, viewer: Viewer, connection_id: str) -> str:
    async with db.read() as session:
        connection: StripeConnection = await service.find(session, viewer.scope, connection_id)
        return secrets.secret_key(db.box, connection)


async def _update(db: DB, viewer: Viewer, connection_id: str, data: ConnectionUpdate) -> None:
    verified = None
    if data.verify:
        key = data.secret_key.get_secret_value() if data.secret_key else await _stored_key(db, viewer, connection_id)
        verified = await service.verify_with_stripe(key, db)
    async with db.transaction() as session:
        connection = await service.find(session, viewer.scope, connection_id, for_update=True)
        service.update_connection(connection, db.box, data, verified)
        await managed_endpoint.forget_if_secret_set_by_hand(session, connection.id, data)


@router.post(PAGE + "/{connection_id}")
async def edit_connection(request: Request, connection_id: str, viewer: SignedIn, form: PostedForm, db: DB) -> Response:
    state, body = forms.connection_form(form, editing=True)
    data = forms.build(ConnectionUpdate, body, state)
    if data is None:
        return await _page(request, viewer, db, state=state, typed_settings=body["settings"], status_code=400)
    try:
        await _update(db, viewer, connection_id, data)
    except APIError as exc:
        state.errors.update(forms.api_errors(exc))
        return await _page(request, viewer, db, state=state, typed_settings=body["settings"], status_code=exc.status)
    return RedirectResponse(f"{PAGE}?notice=connection-saved", status_code=303)


@router.post(PAGE + "/{connection_id}/status")
async def set_connection_status(connection_id: str, viewer: SignedIn, form: PostedForm, db: DB) -> Response:
    status = "disabled" if form.get("status") == "disabled" else "active"
    await _update(db, viewer, connection_id, ConnectionUpdate(status=status))
    notice = "connection-disabled" if status == "disabled" else "connection-enabled"
    return RedirectResponse(f"{PAGE}?notice={notice}", status_code=303)


@router.post(PAGE + "/{connection_id}/delete")
async def delete_connection(
    request: Request, connection_id: str, viewer: SignedIn, _form: PostedForm, db: DB
) -> Response:
    async with db.read() as session:
        await service.find(session, viewer.scope, connection_id)
    try:
        await managed_endpoint.tear_down(db, connection_id)
    except APIError as exc:
        return await _page(request, viewer, db, endpoint_result=exc.message, status_code=exc.status)
    async with db.transaction() as session:
        connection = await service.find(session, viewer.scope, connection_id, for_update=True)
        service.delete_connection(connection)
    return RedirectResponse(f"{PAGE}?notice=connection-deleted", status_code=303)


@router.post(PAGE + "/{connection_id}/test")
async def test_connection(
    request: Request, connection_id: str, viewer: SignedIn, _form: PostedForm, db: DB
) -> Response:
    """Ask Stripe whether the stored key works; the account id it reports is kept on the connection."""
    try:
        await _update(db, viewer, connection_id, ConnectionUpdate(verify=True))
    except ValidationFailed as exc:
        return await _page(request, viewer, db, test_result=(False, exc.message))
    async with db.read() as session:
        connection = await service.find(session, viewer.scope, connection_id)
    account = f" (account {connection.stripe_account_id})" if connection.stripe_account_id else ""
    return await _page(request, viewer, db, test_result=(True, f"Stripe accepted the secret key{account}."))


# --- The managed webhook endpoint ---


@router.post(PAGE + "/{connection_id}/webhook-endpoint")
async def manage_webhook_endpoint(
    request: Request, connection_id: str, viewer: SignedIn, _form: PostedForm, db: DB
) -> Response:
    """Create the endpoint in Stripe (or adopt, move or re-enable it) and store its signing secret."""
    async with db.read() as session:
        await service.find(session, viewer.scope, connection_id)
    url = db.settings.webhook_url(viewer.scope.tenant_id, viewer.scope.environment_id)
    try:
        await managed_endpoint.set_up(db, connection_id, url)
    except APIError as exc:
        return await _page(request, viewer, db, endpoint_result=exc.message, status_code=exc.status)
    return RedirectResponse(f"{PAGE}?notice=webhook-endpoint-ready", status_code=303)


# --- Catch-up from Stripe's Events API (issue 19, section 2) ------------------------------------------------------


@router.post(PAGE + "/{connection_id}/catch-up")
async def request_catch_up(connection_id: str, viewer: SignedIn, _form: PostedForm, db: DB) -> Response:
    async with db.transaction() as session:
        connection = await service.find(session, viewer.scope, connection_id, for_update=True)
        await catch_up.request(session, connection, None)
    return RedirectResponse(f"{PAGE}?notice=catch-up-requested", status_code=303)
