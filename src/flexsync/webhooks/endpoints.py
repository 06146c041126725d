"""HTTP endpoints for webhook deliveries: `/v1/webhook-events` (list, one with its payload, replay)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from flexsync.deps import DB, AuthScope
from flexsync.kit.errors import NotFound
from flexsync.kit.json import JSONResponse
from flexsync.kit.openapi import API_KEY_REQUIRED, errors
from flexsync.kit.pagination import PageQuery, page_body
from flexsync.tenancy.service import Scope
from flexsync.webhooks import repository, service
from flexsync.webhooks.schemas import EventSource, EventStatus, WebhookEvent, WebhookEventList, WebhookEventWithPayload
from flexsync.webhooks.service import event_to_dict

router = APIRouter(prefix="/v1/webhook-events", tags=["webhook events"], responses=API_KEY_REQUIRED)


@router.get("", response_model=WebhookEventList)
async def list_webhook_events(
    scope: AuthScope,
    db: DB,
    page: PageQuery,
    status: EventStatus | None = None,
    event_type: Annotated[str | None, Query(alias="type", max_length=128)] = None,
    source: EventSource | None = None,
) -> JSONResponse:
    async with db.read() as session:
        events, total = await repository.list_page(session, scope, status, event_type, page.limit, page.offset, source)
        items = [event_to_dict(event) for event in events]
    return JSONResponse(page_body(items, total, page))


async def _get(db: DB, scope: Scope, event_id: str, *, with_payload: bool) -> JSONResponse:
    async with db.read() as session:
        event = await repository.get(session, scope, event_id)
        if event is None:
            raise NotFound(f"webhook event {event_id} not found")
        return JSONResponse(event_to_dict(event, with_payload=with_payload))


@router.get("/{event_id}", response_model=WebhookEventWithPayload, responses=errors(404))
async def get_webhook_event(event_id: str, scope: AuthScope, db: DB) -> JSONResponse:
    return await _get(db, scope, event_id, with_payload=True)


@router.post("/{event_id}/replay", response_model=WebhookEvent, responses=errors(404))
async def replay_webhook_event(event_id: str, scope: AuthScope, db: DB) -> JSONResponse:
    """Apply the stored event again now; the answer shows its new status."""
    return JSONResponse(await service.replay(db, event_id, scope))
