"""Webhook events as the API and the CLI show them, finding one to replay, and pruning old ones."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.context import AppContext
from flexsync.kit.errors import NotFound, ValidationFailed
from flexsync.models import WebhookEvent
from flexsync.tenancy.service import Scope
from flexsync.webhooks import repository, stored


def event_to_dict(event: WebhookEvent, *, with_payload: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": event.id,
        "stripe_event_id": event.stripe_event_id,
        "type": event.type,
        "status": event.status,
        "attempts": event.attempts,
        "last_error": event.last_error,
        "note": event.note,
        "customer_id": event.customer_id,
        "stripe_object_id": event.stripe_object_id,
        "connection_id": event.connection_id,
        "livemode": event.livemode,
        "stripe_created": event.stripe_created,
        "received_at": event.received_at,
        "processed_at": event.processed_at,
        "next_attempt_at": event.next_attempt_at,
        "source": event.source,
    }
    if with_payload:
        # A Stripe event holds no secret: it is what Stripe sent, signature header aside.
        body["payload"] = orjson.loads(event.payload)
    return body


async def find_for_replay(session: AsyncSession, event_id: str) -> WebhookEvent:
    """The one stored event with this flexsync id or Stripe event id (any tenant: the CLI is the operator)."""
    found = await repository.find_by_any_id(session, event_id)
    if not found:
        raise NotFound(f"webhook event {event_id} not found")
    if len(found) > 1:
        ids = ", ".join(event.id for event in found)
        raise ValidationFailed(f"{event_id} was received by several connections; replay one of: {ids}")
    return found[0]


async def replay(db: AppContext, event_id: str, scope: Scope | None = None) -> dict[str, Any]:
    """The one replay, for the API, the dashboard and `flexsync events replay`: apply the stored event again
    now; returns it as the API shows it. With `scope`, the event must be the scope's (by its id); without (the
    CLI), any connection's, by either id (find_for_replay)."""
    async with db.read() as session:
        if scope is None:
            event_id = (await find_for_replay(session, event_id)).id
        elif await repository.get(session, scope, event_id) is None:
            raise NotFound(f"webhook event {event_id} not found")
    await stored.replay_event(db, event_id)
    # In a unit of work, not a read session: an API request with an idempotency key commits only once answered,
    # and its answer must show what the replay did.
    async with db.transaction() as session:
        replayed = await session.get(WebhookEvent, event_id, populate_existing=True)
        if replayed is None:  # its connection was deleted meanwhile, and the event with it
            raise NotFound(f"webhook event {event_id} not found")
        return event_to_dict(replayed)


PRUNE_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Pruned:
    deleted: int
    received_before: datetime


async def prune(db: AppContext, retention_days: int, now: datetime) -> Pruned:
    """Delete the stored events received more than `retention_days` ago whose work is done (applied or
    ignored; never `customer.deleted` events), a batch per transaction so no lock is held for long."""
    received_before = now - timedelta(days=retention_days)
    deleted = 0
    while True:
        async with db.transaction() as session:
            count = await repository.prune_events(session, received_before, PRUNE_BATCH)
        deleted += count
        if count < PRUNE_BATCH:
            return Pruned(deleted, received_before)
