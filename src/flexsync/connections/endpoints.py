"""HTTP endpoints of Settings > Integrations (`/v1/connections`): the environment's Stripe connection.

Stripe is asked (`verify: true`) before the database transaction opens, so no lock is held during a network call.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from flexsync.connections import catch_up, managed_endpoint, repository, secrets, service
from flexsync.connections.schemas import (
    CatchUpRequest,
    CatchUpRequested,
    Connection,
    ConnectionCreate,
    ConnectionList,
    ConnectionUpdate,
)
from flexsync.deps import DB, AuthScope
from flexsync.kit.errors import ValidationFailed
from flexsync.kit.json import JSONResponse
from flexsync.kit.openapi import API_KEY_REQUIRED, errors
from flexsync.kit.pagination import PageQuery, page_body

router = APIRouter(prefix="/v1/connections", tags=["connections"], responses=API_KEY_REQUIRED)

WEBHOOK_SECRETS_GUIDE = """
Webhook signing secrets, newest first:

- `webhook_secret` may be left out at creation (Stripe shows the signing secret only once the webhook endpoint
  exists). Until a connection has one, `webhook_secret_set` is false and deliveries to its `webhook_url` answer
  404 `not_found` ("no active Stripe connection with a webhook secret").
- Rotation without a gap: `PUT {"add_webhook_secret": "whsec_new"}` (both secrets verify; `webhook_secrets_count`
  is 2), roll the secret in Stripe, then `PUT {"remove_old_webhook_secrets": true}` (only the newest is kept).
- `PUT {"webhook_secret": "whsec_…"}` replaces them all with one; `{"webhook_secret": null}` removes them all.

One of these three per request. Secrets are write-only: responses show `webhook_secret_set` and
`webhook_secrets_count`, never a secret.
"""


@router.post(
    "",
    status_code=201,
    response_model=Connection,
    responses=errors((409, "already_exists: the environment has a Stripe connection already")),
    summary="Add the environment's Stripe connection (at most one per environment: a second answers 409)",
    description=WEBHOOK_SECRETS_GUIDE,
)
async def create_connection(body: ConnectionCreate, scope: AuthScope, db: DB) -> JSONResponse:
    verified = await service.verify_with_stripe(body.secret_key.get_secret_value(), db) if body.verify else None
    connection = await managed_endpoint.create_connection(db, scope, body, verified)
    return JSONResponse(await _payload(db, scope, connection.id), status_code=201)


async def _payload(db: DB, scope: AuthScope, connection_id: str) -> dict[str, Any]:
    async with db.read() as session:
        connection = await service.find(session, scope, connection_id)
        payload = service.connection_to_dict(connection, db.settings)
        payload["catch_up"] = await catch_up.view(session, connection)
        await managed_endpoint.with_endpoints(session, [payload])
    return payload


@router.get("", response_model=ConnectionList)
async def list_connections(scope: AuthScope, db: DB, page: PageQuery) -> JSONResponse:
    async with db.read() as session:
        items, total = await repository.list_page(session, scope, page.limit, page.offset)
        payloads = []
        for connection in items:
            payload = service.connection_to_dict(connection, db.settings)
            payload["catch_up"] = await catch_up.view(session, connection)
            payloads.append(payload)
        await managed_endpoint.with_endpoints(session, payloads)
        return JSONResponse(page_body(payloads, total, page))


@router.get("/{connection_id}", response_model=Connection, responses=errors(404))
async def get_connection(connection_id: str, scope: AuthScope, db: DB) -> JSONResponse:
    return JSONResponse(await _payload(db, scope, connection_id))


@router.put(
    "/{connection_id}",
    response_model=Connection,
    responses=errors(404),
    summary="Partial update: name, keys, settings (merged), status, webhook secrets",
    description=WEBHOOK_SECRETS_GUIDE,
)
async def update_connection(connection_id: str, body: ConnectionUpdate, scope: AuthScope, db: DB) -> JSONResponse:
    verified = None
    if body.verify:
        if body.secret_key is not None:
            key = body.secret_key.get_secret_value()
        else:
            async with db.read() as session:
                key = secrets.secret_key(db.box, await service.find(session, scope, connection_id))
        verified = await service.verify_with_stripe(key, db)
    if body.manage_webhook_endpoint:
        await _set_up_endpoint(db, scope, connection_id, body)
    async with db.transaction() as session:
        connection = await service.find(session, scope, connection_id, for_update=True)
        service.update_connection(connection, db.box, body, verified)
        await managed_endpoint.forget_if_secret_set_by_hand(session, connection.id, body)
        if body.manage_webhook_endpoint is False:
            await managed_endpoint.stop_managing(session, connection.id)
    return JSONResponse(await _payload(db, scope, connection_id))


async def _set_up_endpoint(db: DB, scope: AuthScope, connection_id: str, body: ConnectionUpdate) -> None:
    """Stripe's side first, once the rest of the update is known to be acceptable: a refusal saves nothing."""
    async with db.read() as session:
        service.check_update(await service.find(session, scope, connection_id), body)
    new_key = body.secret_key.get_secret_value() if body.secret_key is not None else None
    url = db.settings.webhook_url(scope.tenant_id, scope.environment_id)
    await managed_endpoint.set_up(db, connection_id, url, secret_key=new_key)


@router.delete("/{connection_id}", status_code=204, responses=errors(404))
async def delete_connection(connection_id: str, scope: AuthScope, db: DB) -> Response:
    """Delete the connection and its secrets (and the webhook endpoint flexsync manages for it in Stripe); the
    environment is free for a new connection."""
    async with db.read() as session:
        await service.find(session, scope, connection_id)
    await managed_endpoint.tear_down(db, connection_id)
    async with db.transaction() as session:
        connection = await service.find(session, scope, connection_id, for_update=True)
        service.delete_connection(connection)
    return Response(status_code=204)


# --- Catch-up from Stripe's Events API (webhooks/catch_up.py runs it) -------------------------------------------------


@router.post(
    "/{connection_id}/catch-up",
    status_code=202,
    response_model=CatchUpRequested,
    responses=errors(404),
    summary="Catch up now: list the connection's customer events from Stripe and apply those not received",
    description="A worker lists the customer events Stripe created since the connection's catch-up cursor (or "
    "`since`), stores those no webhook delivered and applies them, as a webhook delivery would; the connection's "
    "`catch_up` shows how it went. A catch-up runs anyway every FLEXSYNC_STRIPE_CATCHUP_INTERVAL_SECONDS.",
)
async def request_catch_up(
    connection_id: str, scope: AuthScope, db: DB, body: CatchUpRequest | None = None
) -> JSONResponse:
    since = body.since if body is not None else None
    async with db.transaction() as session:
        connection = await service.find(session, scope, connection_id, for_update=True)
        if connection.status != "active":
            raise ValidationFailed(f"the Stripe connection {connection_id} is {connection.status}: enable it first")
        await catch_up.request(session, connection, since)
        view = await catch_up.view(session, connection)
    return JSONResponse({"connection_id": connection_id, "status": "requested", "since": since, "catch_up": view}, 202)
