"""Stored Stripe events: applying those just received, the retry sweep, and replay.

A stored event that fails to apply is marked `failed` with the error and retried with exponential backoff
(2 s doubling, at most an hour apart); after MAX_ATTEMPTS attempts it is `dead`, kept for a manual replay.
`apply_due_events` is the retry sweep (a periodic sweep of the worker): it also picks up events left `queued`
by a process that died. `replay_event` is the one replay, for the API, the dashboard and the CLI. Applying
itself is the sync domain's (sync/inbound.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import orjson
import stripe
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.connections.accounts import stripe_account
from flexsync.context import AppContext
from flexsync.logs import describe_error
from flexsync.metrics import STRIPE_EVENTS
from flexsync.models import StripeConnection, utcnow
from flexsync.stripe.calls import StripeAccount, StripeCaller, StripeCallFailed
from flexsync.sync import inbound
from flexsync.webhooks import repository

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 10
RETRY_BASE_SECONDS = 2.0
RETRY_CAP_SECONDS = 3600.0
# A queued event that its receiving process has not applied by then is taken over by the retry sweep.
RECOVERY_DELAY = timedelta(seconds=30)
STRIPE_FETCH_CONCURRENCY = 8

Claim = Callable[[AsyncSession], Awaitable[Sequence[repository.ClaimedEvent]]]


def event_retry_delay(attempts: int, first: float = RETRY_BASE_SECONDS) -> timedelta:
    """Exponential backoff with jitter: about `first` (FLEXSYNC_WEBHOOK_RETRY_FIRST_SECONDS, 2 s) after the first
    failure, doubling, at most an hour."""
    seconds = min(RETRY_CAP_SECONDS, first * 2 ** max(0, attempts - 1))
    return timedelta(seconds=seconds * random.uniform(0.8, 1.2))


async def apply_due_events(db: AppContext, *, limit: int = 200, caller: StripeCaller | None = None) -> int:
    """Apply what is due: failed events whose backoff has passed, and queued events that their receiving
    process did not get to (it stopped or crashed). Safe in many processes at once; returns how many.

    `caller`: the process's StripeCaller, for events that need Stripe's current state (its connection pool is
    reused from pass to pass); without one, a pass that needs Stripe opens and closes its own."""
    now = utcnow()
    return len(await _apply_claimed(db, lambda session: repository.claim_due(session, now, limit), caller=caller))


async def apply_queued_events(db: AppContext, event_ids: Sequence[str], *, caller: StripeCaller | None = None) -> None:
    """Apply events this process has just stored as queued (unless another process took them meanwhile)."""
    await _apply_claimed(db, _claim_ids(event_ids, pending_only=True), caller=caller)


async def replay_event(db: AppContext, event_id: str) -> None:
    """Apply a stored event again now, whatever its status; the ordering rules still hold."""
    await _apply_claimed(db, _claim_ids([event_id], pending_only=False), force=True)


async def _apply_claimed(
    db: AppContext,
    claim: Claim,
    *,
    force: bool = False,
    fetched: inbound.Fetched | None = None,
    caller: StripeCaller | None = None,
) -> list[str]:
    """Claim stored events, apply them in one transaction, record the outcomes; returns the claimed ids.

    If the batch fails, each event is tried on its own, so one bad event fails alone. Events that need
    Stripe's current state are fetched after the commit (no network call inside a transaction) and applied.
    """
    claimed: list[repository.ClaimedEvent] = []
    try:
        async with db.transaction() as session:
            claimed = list(await claim(session))
            if not claimed:
                return []
            events = [_event_from_row(row) for row in claimed]
            outcomes = await inbound.apply_batch(session, events, fetched=fetched)
            await repository.record_outcomes(session, claimed, outcomes, utcnow(), RECOVERY_DELAY)
    except Exception as exc:
        if len(claimed) > 1:
            for row in claimed:
                claim_one = _claim_ids([row.id], pending_only=not force)
                await _apply_claimed(db, claim_one, force=force, fetched=fetched, caller=caller)
        elif claimed:
            await _record_failure(db, claimed[0].id, exc)
        else:
            raise
        return [row.id for row in claimed]
    waiting = [event for event, outcome in zip(events, outcomes, strict=True) if outcome.needs_stripe_state]
    if waiting and fetched is None:
        await _apply_with_stripe_state(db, waiting, force, caller)
    return [row.id for row in claimed]


def _claim_ids(event_ids: Sequence[str], *, pending_only: bool) -> Claim:
    return lambda session: repository.claim_by_ids(session, event_ids, pending_only=pending_only)


def _event_from_row(row: repository.ClaimedEvent) -> inbound.InboundEvent:
    try:
        payload = orjson.loads(row.payload)
    except orjson.JSONDecodeError:
        payload = {"id": row.stripe_event_id, "type": row.type}
    return inbound.InboundEvent.from_payload(row.id, row.connection_id, payload)


async def _record_failure(db: AppContext, event_id: str, exc: BaseException) -> None:
    log.warning("applying a Stripe event failed", event_id=event_id, error=describe_error(exc))
    async with db.transaction() as session:
        recorded = await repository.record_failure(
            session,
            event_id,
            describe_error(exc),
            utcnow(),
            MAX_ATTEMPTS,
            lambda attempts: event_retry_delay(attempts, db.settings.webhook_retry_first_seconds),
        )
    if recorded is not None:
        STRIPE_EVENTS.labels(*recorded).inc()


async def _apply_with_stripe_state(
    db: AppContext, events: Sequence[inbound.InboundEvent], force: bool, caller: StripeCaller | None
) -> None:
    """Re-fetch the events' customers from Stripe, then apply the events against that current state.

    An event whose customer cannot be fetched (network, Stripe down) is a failed attempt, retried later.
    """
    fetched: dict[str, Mapping[str, Any] | None] = {}
    unreachable: dict[str, BaseException] = {}
    semaphore = asyncio.Semaphore(STRIPE_FETCH_CONCURRENCY)
    by_connection: dict[str, set[str]] = defaultdict(set)
    for event in events:
        if event.stripe_object_id:
            by_connection[event.connection_id].add(event.stripe_object_id)

    async def fetch(stripe_caller: StripeCaller, account: StripeAccount, stripe_id: str) -> None:
        async with semaphore:
            try:
                fetched[stripe_id] = await stripe_caller.call(
                    account, "customers.retrieve", lambda client: _current_customer(client, stripe_id)
                )
            except StripeCallFailed as failure:
                # The SDK's own error is what the event's last_error has always shown.
                unreachable[stripe_id] = failure.__cause__ or failure

    # Through a StripeCaller like every other Stripe request: the connection's shared rate limit, metrics.
    async with contextlib.AsyncExitStack() as own:
        if caller is None:
            caller = await own.enter_async_context(StripeCaller(db.settings, db.sessions))
        for connection_id, stripe_ids in by_connection.items():
            async with db.read() as session:
                connection = await session.get(StripeConnection, connection_id)
            if connection is None or not connection.secret_key_encrypted:
                continue  # deleted meanwhile: applying ignores its events
            account = stripe_account(connection, db.box, db.settings)
            await asyncio.gather(*(fetch(caller, account, stripe_id) for stripe_id in stripe_ids))
    ready = []
    for event in events:
        failure = unreachable.get(event.stripe_object_id or "")
        if failure is None:
            ready.append(event.id)
        else:
            await _record_failure(db, event.id, failure)
    if ready:
        await _apply_claimed(db, _claim_ids(ready, pending_only=not force), force=force, fetched=fetched)


async def _current_customer(client: stripe.StripeClient, stripe_id: str) -> Mapping[str, Any] | None:
    try:
        customer = await client.v1.customers.retrieve_async(stripe_id)
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404:
            return None
        raise
    current: dict[str, Any] = customer.to_dict()
    return None if current.get("deleted") else current
