"""`POST /v1/webhooks/stripe/{tenant_id}/{environment_id}`: Stripe's deliveries come in here.

No API key: a delivery proves itself with its `Stripe-Signature`, checked with the official SDK's
`verify_header` (300 s tolerance) against each of the connection's signing secrets. This is the hot path:
`WebhookRoute` serves it ahead of the app's routing and per-request machinery (request models, dependency
injection, exit stacks), the body is parsed once with orjson, and the event goes to the group-committing
ingestor.

Answers: 200 `{"received": true, "event_id", "status"}` once the event is durably stored; 400 for a bad or
missing signature, a stale timestamp, or a body that is not a Stripe event (nothing stored); 404 when the
environment has no active Stripe connection with a signing secret; 413 over 1 MiB (the app's body limit).
Error messages never repeat the payload or a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send
from stripe import SignatureVerificationError, WebhookSignature

from flexsync.ids import new_id
from flexsync.kit.error_responses import error_response
from flexsync.kit.errors import APIError, NotFound, ValidationFailed
from flexsync.kit.json import JSONResponse
from flexsync.kit.middleware import BodySizeLimit
from flexsync.kit.openapi import errors
from flexsync.kit.text import NUL
from flexsync.metrics import WEBHOOK_EVENTS
from flexsync.models import WebhookEvent, max_length
from flexsync.sync.inbound import InboundEvent
from flexsync.webhooks.ingest import Delivery
from flexsync.webhooks.pipeline import WebhookPipeline
from flexsync.webhooks.repository import EVENT_ID_PREFIX
from flexsync.webhooks.schemas import WebhookReceived

PATH = "/v1/webhooks/stripe/{tenant_id}/{environment_id}"
PATH_PREFIX = "/v1/webhooks/stripe/"
TOLERANCE_SECONDS = 300
# Column sizes of webhook_events: anything longer is not a Stripe event.
MAX_ID_LENGTH = max_length(WebhookEvent.stripe_event_id)
MAX_TYPE_LENGTH = max_length(WebhookEvent.type)


def _verifies(payload: str, header: str, secrets: tuple[str, ...], tolerance: int | None) -> bool:
    for secret in secrets:
        try:
            WebhookSignature.verify_header(payload, header, secret, tolerance)
        except SignatureVerificationError:
            continue
        return True
    return False


def _rejected(reason: str, message: str) -> ValidationFailed:
    WEBHOOK_EVENTS.labels(f"rejected_{reason}").inc()
    return ValidationFailed(message, {"reason": reason})


def _parse_event(body: bytes) -> Mapping[str, Any]:
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _rejected("malformed_json", "the request body is not valid JSON") from None
    if not isinstance(event, dict):
        raise _rejected("not_an_event", "the request body is not a Stripe event")
    event_id, event_type = event.get("id"), event.get("type")
    if not (isinstance(event_id, str) and 0 < len(event_id) <= MAX_ID_LENGTH and NUL not in event_id):
        raise _rejected("not_an_event", "the request body is not a Stripe event: no valid `id`")
    if not (isinstance(event_type, str) and 0 < len(event_type) <= MAX_TYPE_LENGTH and NUL not in event_type):
        raise _rejected("not_an_event", "the request body is not a Stripe event: no valid `type`")
    return event


async def receive_stripe_webhook(request: Request) -> Response:
    pipeline: WebhookPipeline = request.app.state.webhooks
    tenant_id: str = request.path_params["tenant_id"]
    environment_id: str = request.path_params["environment_id"]
    connection = await pipeline.connections.get(tenant_id, environment_id)
    if connection is None:
        WEBHOOK_EVENTS.labels("rejected_unknown_endpoint").inc()
        raise NotFound("no active Stripe connection with a webhook secret for this tenant and environment")
    body = await request.body()
    header = request.headers.get("stripe-signature")
    if not header:
        raise _rejected("missing_signature", "the Stripe-Signature header is missing")
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _rejected("malformed_json", "the request body is not UTF-8 JSON") from None

    if not _verifies(payload, header, connection.webhook_secrets, TOLERANCE_SECONDS):
        # The secret may have been rotated since the cache was filled: look again before refusing.
        connection = await pipeline.connections.reload(tenant_id, environment_id)
        if connection is None:
            raise NotFound("no active Stripe connection with a webhook secret for this tenant and environment")
        if not _verifies(payload, header, connection.webhook_secrets, TOLERANCE_SECONDS):
            if _verifies(payload, header, connection.webhook_secrets, None):
                raise _rejected(
                    "stale_timestamp",
                    f"the Stripe-Signature timestamp is more than {TOLERANCE_SECONDS} s old; deliveries are "
                    "accepted only when fresh",
                )
            raise _rejected(
                "bad_signature", "the Stripe-Signature does not match this endpoint's webhook signing secret"
            )

    event = _parse_event(body)
    delivery = Delivery(
        event=InboundEvent.from_payload(new_id(EVENT_ID_PREFIX), connection.view.id, event),
        connection=connection.view,
        payload=payload,
    )
    status = await pipeline.ingestor.submit(delivery)
    return JSONResponse({"received": True, "event_id": delivery.event.stripe_event_id, "status": status})


def _path_parameter(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


# The route takes the Request as it is (WebhookRoute calls it directly), so FastAPI cannot see its parameters and
# body: they are described here.
OPENAPI_EXTRA = {
    "parameters": [
        _path_parameter("tenant_id"),
        _path_parameter("environment_id"),
        {
            "name": "Stripe-Signature",
            "in": "header",
            "required": True,
            "description": f"Stripe's signature of the body, checked with the connection's webhook signing "
            f"secrets; at most {TOLERANCE_SECONDS} s old.",
            "schema": {"type": "string"},
        },
    ],
    "requestBody": {
        "required": True,
        "description": "A Stripe event, exactly as Stripe signed it.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["id", "type"],
                    "properties": {"id": {"type": "string"}, "type": {"type": "string"}},
                }
            }
        },
    },
}

router = APIRouter(tags=["stripe webhook"])
router.add_api_route(
    PATH,
    receive_stripe_webhook,
    methods=["POST"],
    summary="Receive a Stripe event (no API key: the Stripe-Signature proves it)",
    description="Handled: `customer.created`, `customer.updated`, `customer.deleted`; other event types are stored "
    "and answered `ignored`. An event is stored once by its id: a repeat answers `duplicate` and changes nothing.",
    response_model=WebhookReceived,
    responses=errors(
        (
            400,
            "validation_error: a bad or missing signature, a stale timestamp, or a body that is not a Stripe event "
            "(`details.reason` says which); nothing stored",
        ),
        (404, "not_found: no active Stripe connection with a webhook secret for this tenant and environment"),
        413,
    ),
    openapi_extra=OPENAPI_EXTRA,
)


class WebhookRoute:
    """ASGI middleware that answers Stripe's deliveries itself and hands every other request to the app.

    Added as the app's outermost middleware but two (kit.middleware's UnexpectedErrors, which answers an
    unexpected exception in the contract's shape, and the check that refuses a URL holding a NUL character),
    it keeps the body size limit (413) and the error shape, and skips the rest of the stack for the busiest
    route. Other methods on the path fall through to the
    app's router, which has the route too and answers them 405.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route = Route(PATH, receive_stripe_webhook, methods=["POST"])
        self.handle = BodySizeLimit(self._handle)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PATH_PREFIX):
            match, child_scope = self.route.matches(scope)
            if match is Match.FULL:
                scope.update(child_scope)
                await self.handle(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await receive_stripe_webhook(Request(scope, receive))
        except APIError as exc:
            response = error_response(exc.status, exc.code, exc.message, exc.details)
        await response(scope, receive, send)
