"""The Stripe webhook endpoint flexsync manages for a connection (`manage_webhook_endpoint`), so nobody copies a
signing secret by hand.

`establish` makes Stripe's side right for the connection's webhook URL: it lists the account's endpoints and
- adopts the endpoint it made before (its secret is the connection's) when it points at the URL, setting its
  events and enabling it if Stripe disabled it;
- otherwise creates one and stores the secret Stripe returns once; endpoints it replaces (one at an older URL,
  or one at this URL made by hand, whose secret Stripe will not reveal) are deleted only after the new secret is
  stored, and the old secrets keep verifying for `OLD_SECRETS_GRACE` so no delivery in flight is refused.

One process at a time per connection: a lease in the connection's `webhook_endpoints` row, taken in a short
transaction of its own. Stripe is never called inside a database transaction (on SQLite that would hold the one
write lock, and the Stripe rate limit's own transaction would wait for it). Should a lease run out under a stuck
holder, the creation's Idempotency-Key (the connection, its count of endpoints made, the URL) still makes two
creates one endpoint.

A connection created with its endpoint (`create_connection`) needs no lease: no other process knows it yet. Its
endpoint is made in Stripe first, under the id the connection is about to take, and saved in the connection's
own write, so the request is one write like any other (its Idempotency-Key applies; Stripe refusing saves
nothing); the endpoints it replaces are deleted once that write has committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.connections import endpoint_repository as repository
from flexsync.connections import service
from flexsync.connections.accounts import stripe_account, unsaved_account
from flexsync.connections.schemas import MAX_WEBHOOK_SECRETS, ConnectionCreate, ConnectionUpdate
from flexsync.context import AppContext
from flexsync.crypto import SecretBox
from flexsync.idempotency import writes
from flexsync.ids import new_id
from flexsync.kit.errors import APIError, NotFound, ValidationFailed
from flexsync.metrics import WEBHOOK_ENDPOINT_ENABLED
from flexsync.models import StripeConnection, WebhookEndpoint, utcnow
from flexsync.stripe import webhook_endpoints as stripe_endpoints
from flexsync.stripe.calls import StripeAccount, StripeCaller, StripeCallFailed
from flexsync.stripe.webhook_endpoints import CUSTOMER_EVENTS, StripeEndpoint
from flexsync.tenancy.service import Scope

log = structlog.get_logger(__name__)

# Longer than a few Stripe requests at their timeout: a holder that died frees the endpoint after this.
LEASE_SECONDS = 120.0
LEASE_POLL_SECONDS = 0.1
# Stripe may still be delivering, signed with a replaced endpoint's secret, what it sent before the deletion.
OLD_SECRETS_GRACE = timedelta(minutes=10)
CHECK_BATCH = 100


def endpoint_to_dict(row: WebhookEndpoint | None) -> dict[str, Any] | None:
    """The connection's `webhook_endpoint`: null while flexsync knows of none."""
    if row is None or row.stripe_endpoint_id is None:
        return None
    return {
        "id": row.stripe_endpoint_id,
        "url": row.url,
        "status": row.status,
        "enabled_events": list(row.enabled_events),
        "managed": row.managed,
    }


async def with_endpoints(session: AsyncSession, payloads: Sequence[dict[str, Any]]) -> None:
    """Add `webhook_endpoint` to public connection objects."""
    rows = await repository.for_connections(session, [payload["id"] for payload in payloads])
    for payload in payloads:
        payload["webhook_endpoint"] = endpoint_to_dict(rows.get(payload["id"]))


def _refused(failure: StripeCallFailed, doing: str) -> APIError:
    refusal = stripe_endpoints.refusal(failure)
    fields = {"url_refused": "webhook_url", "key_permission": "secret_key", "key_rejected": "secret_key"}
    details: dict[str, Any] = {"cause": refusal.cause, "stripe_status": refusal.http_status}
    if refusal.cause in fields:
        details["fields"] = {fields[refusal.cause]: refusal.cause}
    return ValidationFailed(f"could not {doing}: {refusal.message}; nothing was changed", details)


@asynccontextmanager
async def _lease(db: AppContext, connection_id: str) -> AsyncIterator[None]:
    # The lease and the endpoint's records commit as they go, with Stripe calls between them (steps of their
    # own, before the request's write): a request already answered under its Idempotency-Key stops here.
    await writes.replay_if_recorded()
    holder = secrets.token_hex(8)
    async with db.step() as session:
        await repository.add_row(session, connection_id)
    while True:
        now = utcnow()
        async with db.step() as session:
            if await repository.take_lease(session, connection_id, holder, now, now + timedelta(seconds=LEASE_SECONDS)):
                break
        await asyncio.sleep(LEASE_POLL_SECONDS)
    try:
        yield
    finally:
        try:
            async with db.step() as session:
                await repository.release_lease(session, connection_id, holder)
        except Exception:
            log.warning("could not release the webhook endpoint lease; it runs out by itself", exc_info=True)


def _idempotency_key(connection_id: str, generation: int, url: str) -> str:
    return f"flexsync-webhook-endpoint-{connection_id}-{generation}-{hashlib.sha256(url.encode()).hexdigest()[:16]}"


def _description(connection_id: str, name: str) -> str:
    return f"flexsync: customer sync for connection {connection_id} ({name})"[:5000]


async def _load(db: AppContext, connection_id: str) -> tuple[StripeConnection, WebhookEndpoint]:
    async with db.read() as session:
        connection = await repository.connection(session, connection_id)
        row = await repository.get(session, connection_id)
    if connection is None or row is None:
        raise NotFound(f"connection {connection_id} not found")
    return connection, row


async def establish(db: AppContext, caller: StripeCaller, connection_id: str, account: StripeAccount, url: str) -> None:
    """Create, adopt or move the connection's endpoint so that Stripe sends its customer events to `url`.

    Raises ValidationFailed naming the cause when Stripe refuses; nothing is stored then.
    """
    async with _lease(db, connection_id):
        connection, row = await _load(db, connection_id)
        try:
            listed = await stripe_endpoints.list_all(caller, account)
            held = next((e for e in listed if row.stripe_endpoint_id and e.id == row.stripe_endpoint_id), None)
            created: StripeEndpoint | None = None
            if held is not None and held.url == url:
                endpoint = await _adopt(caller, connection_id, account, held)
            else:
                key = _idempotency_key(connection_id, row.generation, url)
                created = endpoint = await stripe_endpoints.create(
                    caller, account, url, _description(connection_id, connection.name), key, connection_id=connection_id
                )
        except StripeCallFailed as failure:
            raise _refused(failure, "set up the Stripe webhook endpoint") from None
        retire = [e.id for e in listed if e.url == url and e.id != endpoint.id]
        if held is not None and held.id != endpoint.id:
            retire.append(held.id)
        await _record(db, connection_id, endpoint, created, retire)
        log.info(
            "webhook endpoint set up",
            connection_id=connection_id,
            endpoint_id=endpoint.id,
            created=created is not None,
            replacing=retire,
        )
        await _retire(db, caller, connection_id, account)


async def _adopt(
    caller: StripeCaller, connection_id: str, account: StripeAccount, held: StripeEndpoint
) -> StripeEndpoint:
    changes: dict[str, Any] = {}
    if sorted(held.enabled_events) != sorted(CUSTOMER_EVENTS):
        changes["enabled_events"] = list(CUSTOMER_EVENTS)
    if held.status == "disabled":
        changes["disabled"] = False
    if held.metadata.get(stripe_endpoints.CONNECTION_METADATA_KEY) != connection_id:
        changes["metadata"] = {stripe_endpoints.CONNECTION_METADATA_KEY: connection_id}
    if not changes:
        return held
    return await stripe_endpoints.update(caller, account, held.id, **changes)


def _note(row: WebhookEndpoint, endpoint: StripeEndpoint, now: datetime) -> None:
    row.stripe_endpoint_id = endpoint.id
    row.url = endpoint.url
    row.status = endpoint.status
    row.enabled_events = list(endpoint.enabled_events)
    row.checked_at = now
    row.updated_at = now


async def _record(
    db: AppContext,
    connection_id: str,
    endpoint: StripeEndpoint,
    created: StripeEndpoint | None,
    retire: Sequence[str],
) -> None:
    now = utcnow()
    async with db.step() as session:
        connection = await repository.connection(session, connection_id, for_update=True)
        row = await repository.get(session, connection_id, for_update=True)
        if connection is None or row is None:
            raise NotFound(f"connection {connection_id} not found")
        if created is not None and created.secret:
            kept = list(connection.webhook_secrets_encrypted)
            connection.webhook_secrets_encrypted = [db.box.encrypt(created.secret), *kept][:MAX_WEBHOOK_SECRETS]
            connection.updated_at = now
            row.generation += 1
            if kept:
                row.old_secrets_until = now + OLD_SECRETS_GRACE
        _note(row, endpoint, now)
        row.managed = True
        row.retiring_endpoint_ids = sorted({*row.retiring_endpoint_ids, *retire} - {endpoint.id})


async def _retire(db: AppContext, caller: StripeCaller, connection_id: str, account: StripeAccount) -> None:
    """Delete the replaced endpoints in Stripe; what fails is left for the status check to try again."""
    _, row = await _load(db, connection_id)
    deleted: list[str] = []
    for endpoint_id in row.retiring_endpoint_ids:
        try:
            await stripe_endpoints.delete(caller, account, endpoint_id)
        except StripeCallFailed as failure:
            log.warning(
                "could not delete a replaced webhook endpoint; trying again later",
                connection_id=connection_id,
                endpoint_id=endpoint_id,
                error=failure.message,
            )
            continue
        deleted.append(endpoint_id)
    if not deleted:
        return
    now = utcnow()
    async with db.step() as session:
        fresh = await repository.get(session, connection_id, for_update=True)
        if fresh is not None:
            fresh.retiring_endpoint_ids = [i for i in fresh.retiring_endpoint_ids if i not in deleted]
            # The grace for the replaced endpoints' secrets runs from their deletion.
            fresh.old_secrets_until = now + OLD_SECRETS_GRACE
            fresh.updated_at = now


async def stop_managing(session: AsyncSession, connection_id: str) -> None:
    """`manage_webhook_endpoint: false`, in the update's write: flexsync leaves the endpoint in Stripe as it is
    and stops changing it."""
    row = await repository.get(session, connection_id, for_update=True)
    if row is not None and row.managed:
        row.managed = False
        row.updated_at = utcnow()


async def forget_if_secret_set_by_hand(session: AsyncSession, connection_id: str, data: ConnectionUpdate) -> None:
    """A webhook secret set by hand (replacing them all, or added as the newest) takes the managed endpoint's
    place: flexsync no longer counts the endpoint as its own (a later `establish` replaces it). Dropping the old
    secrets keeps the newest, so it changes nothing here."""
    if "webhook_secret" not in data.model_fields_set and data.add_webhook_secret is None:
        return
    row = await repository.get(session, connection_id, for_update=True)
    if row is not None and row.stripe_endpoint_id is not None:
        row.stripe_endpoint_id = None
        row.managed = False
        row.status = None
        row.updated_at = utcnow()


async def remove(db: AppContext, caller: StripeCaller, connection_id: str, account: StripeAccount) -> None:
    """Delete the connection's managed endpoint (and any replaced one still waiting) in Stripe, before the
    connection itself is deleted. Stripe out of reach stops the deletion; a key Stripe no longer accepts does
    not (the endpoint then fails its deliveries and Stripe disables it)."""
    async with _lease(db, connection_id):
        _, row = await _load(db, connection_id)
        current = [row.stripe_endpoint_id] if row.managed and row.stripe_endpoint_id else []
        ids = [*current, *row.retiring_endpoint_ids]
        for endpoint_id in ids:
            try:
                await stripe_endpoints.delete(caller, account, endpoint_id)
            except StripeCallFailed as failure:
                if failure.retryable:
                    raise ValidationFailed(
                        f"could not delete the connection's webhook endpoint {endpoint_id} in Stripe: "
                        f"{failure.message}; nothing was deleted: try again",
                        {"cause": "unreachable"},
                    ) from None
                log.warning(
                    "could not delete the managed webhook endpoint; deleting the connection anyway",
                    connection_id=connection_id,
                    endpoint_id=endpoint_id,
                    error=failure.message,
                )
        async with db.step() as session:
            fresh = await repository.get(session, connection_id, for_update=True)
            if fresh is not None:
                fresh.stripe_endpoint_id = None
                fresh.status = None
                fresh.retiring_endpoint_ids = []
                fresh.updated_at = utcnow()


async def _has_managed_endpoint(session: AsyncSession, connection_id: str) -> bool:
    row = await repository.get(session, connection_id)
    return bool(row is not None and ((row.managed and row.stripe_endpoint_id) or row.retiring_endpoint_ids))


async def check(db: AppContext, caller: StripeCaller, connection_id: str) -> None:
    """Read the endpoint's status from Stripe; finish deleting replaced endpoints; drop replaced secrets whose
    grace has run out."""
    connection, row = await _load(db, connection_id)
    if connection.deleted_at is not None or not row.managed or row.stripe_endpoint_id is None:
        return
    account = stripe_account(connection, db.box, db.settings)
    try:
        endpoint = await stripe_endpoints.retrieve(caller, account, row.stripe_endpoint_id)
        listed = await stripe_endpoints.list_all(caller, account)
    except StripeCallFailed as failure:
        log.warning("could not read the webhook endpoint's status", connection_id=connection_id, error=failure.message)
        return
    await _delete_strays(db, caller, account, row, listed)
    if row.retiring_endpoint_ids:
        await _retire(db, caller, connection_id, account)
    now = utcnow()
    async with db.transaction() as session:
        fresh = await repository.get(session, connection_id, for_update=True)
        locked = await repository.connection(session, connection_id, for_update=True)
        if fresh is None or locked is None or fresh.stripe_endpoint_id != row.stripe_endpoint_id:
            return
        if endpoint is None:
            fresh.status = "missing"
        else:
            _note(fresh, endpoint, now)
        fresh.checked_at = now
        fresh.updated_at = now
        expired = fresh.old_secrets_until is not None and fresh.old_secrets_until <= now
        if expired and not fresh.retiring_endpoint_ids:
            locked.webhook_secrets_encrypted = locked.webhook_secrets_encrypted[:1]
            fresh.old_secrets_until = None
    if endpoint is not None and endpoint.status == "disabled":
        log.warning("Stripe has disabled the webhook endpoint", connection_id=connection_id, endpoint_id=endpoint.id)


async def _delete_strays(
    db: AppContext, caller: StripeCaller, account: StripeAccount, row: WebhookEndpoint, listed: Sequence[StripeEndpoint]
) -> None:
    """Delete the endpoints flexsync made at this connection's URL for a connection that is not live: one made for a
    new connection whose write never committed (the process died in between, or the COMMIT was lost and the
    request not sent again). Stripe would deliver to it with a secret nobody holds. Endpoints made by hand are left
    alone (only `establish` replaces those, when asked)."""
    known = {row.stripe_endpoint_id, *row.retiring_endpoint_ids}
    made_for = {
        e.id: e.metadata[stripe_endpoints.CONNECTION_METADATA_KEY]
        for e in listed
        if e.url == row.url and e.id not in known and e.metadata.get(stripe_endpoints.CONNECTION_METADATA_KEY)
    }
    if not made_for:
        return
    async with db.read() as session:
        live = await repository.live_connection_ids(session, set(made_for.values()))
    for endpoint_id, owner in made_for.items():
        if owner in live:
            continue
        try:
            await stripe_endpoints.delete(caller, account, endpoint_id)
        except StripeCallFailed as failure:
            log.warning("could not delete a stray webhook endpoint", endpoint_id=endpoint_id, error=failure.message)
            continue
        log.info("deleted a stray webhook endpoint", connection_id=row.connection_id, endpoint_id=endpoint_id)


async def check_due(db: AppContext, caller: StripeCaller) -> None:
    """The periodic status check (connections/sweeps.py): each managed endpoint at most once per
    FLEXSYNC_WEBHOOK_ENDPOINT_CHECK_SECONDS, however many workers run it."""
    now = utcnow()
    checked_before = now - timedelta(seconds=db.settings.webhook_endpoint_check_seconds)
    async with db.read() as session:
        due = await repository.due_for_check(session, checked_before, CHECK_BATCH)
    for connection_id in due:
        async with db.transaction() as session:
            claimed = await repository.claim_check(session, connection_id, checked_before, utcnow())
        if not claimed:
            continue
        try:
            await check(db, caller, connection_id)
        except Exception:
            log.exception("webhook endpoint check failed", connection_id=connection_id)


async def publish_status_metric(db: AppContext) -> None:
    """Set the endpoint status gauge from the database, just before /metrics answers: the check may run in
    another process (a `flexsync worker`)."""
    async with db.read() as session:
        rows = await repository.statuses(session)
    WEBHOOK_ENDPOINT_ENABLED.clear()
    for connection_id, status in rows:
        WEBHOOK_ENDPOINT_ENABLED.labels(connection_id).set(1 if status == "enabled" else 0)


async def _account(db: AppContext, connection_id: str, secret_key: str | None) -> StripeAccount:
    async with db.read() as session:
        connection = await repository.connection(session, connection_id)
    if connection is None:
        raise NotFound(f"connection {connection_id} not found")
    account = stripe_account(connection, db.box, db.settings)
    return account if secret_key is None else replace(account, secret_key=secret_key)


async def set_up(db: AppContext, connection_id: str, url: str, *, secret_key: str | None = None) -> None:
    """`establish` for a request or a command, with a Stripe caller of its own; `secret_key`: a key the
    connection is about to take instead of its stored one."""
    account = await _account(db, connection_id, secret_key)
    async with StripeCaller(db.settings, db.sessions) as caller:
        await establish(db, caller, connection_id, account, url)


async def tear_down(db: AppContext, connection_id: str) -> None:
    """`remove` for a request deleting the connection: nothing to do unless flexsync manages an endpoint."""
    async with db.read() as session:
        if not await _has_managed_endpoint(session, connection_id):
            return
    account = await _account(db, connection_id, None)
    async with StripeCaller(db.settings, db.sessions) as caller:
        await remove(db, caller, connection_id, account)


async def sync_endpoint(db: AppContext, connection_id: str) -> dict[str, Any] | None:
    """`flexsync connections sync-endpoint ID`: `set_up` at the webhook URL of this process's settings."""
    async with db.read() as session:
        connection = await repository.connection(session, connection_id)
    if connection is None or connection.deleted_at is not None:
        raise NotFound(f"connection {connection_id} not found")
    await set_up(db, connection_id, db.settings.webhook_url(connection.tenant_id, connection.environment_id))
    async with db.read() as session:
        return endpoint_to_dict(await repository.get(session, connection_id))


@dataclass(frozen=True, slots=True)
class _NewEndpoint:
    """The endpoint made in Stripe for a connection about to be saved, and the endpoints at its URL it replaces."""

    connection_id: str
    endpoint: StripeEndpoint
    replaces: list[str]
    account: StripeAccount


async def create_connection(
    db: AppContext, scope: Scope, data: ConnectionCreate, verified: service.Verified | None
) -> StripeConnection:
    """Save a new connection in the request's write. With `manage_webhook_endpoint`, its endpoint is made in
    Stripe first and saved in the same write (a refusal saves nothing); the endpoints it replaces at its URL are
    deleted once that write has committed."""
    if not data.manage_webhook_endpoint:
        async with db.transaction() as session:
            return await service.create_connection(session, db.box, scope, data, verified)
    await writes.replay_if_recorded()
    async with db.read() as session:
        await service.check_new(session, scope, data)
    new = await _make_for_new(db, data, db.settings.webhook_url(scope.tenant_id, scope.environment_id))
    try:
        async with db.transaction() as session:
            connection = await service.create_connection(
                session, db.box, scope, data, verified, connection_id=new.connection_id
            )
            session.add(_row_for_new(db.box, connection, new))
    except BaseException:
        await _abandon(db, new)
        raise
    log.info(
        "webhook endpoint set up", connection_id=new.connection_id, endpoint_id=new.endpoint.id, replacing=new.replaces
    )
    if new.replaces:
        await db.after_commit(lambda: _retire_replaced(db, new.connection_id))
    return connection


async def _make_for_new(db: AppContext, data: ConnectionCreate, url: str) -> _NewEndpoint:
    connection_id = new_id("conn")
    account = unsaved_account(data.secret_key.get_secret_value())
    try:
        async with StripeCaller(db.settings, db.sessions) as caller:
            listed = await stripe_endpoints.list_all(caller, account)
            key = _idempotency_key(connection_id, 0, url)
            description = _description(connection_id, data.name)
            endpoint = await stripe_endpoints.create(
                caller, account, url, description, key, connection_id=connection_id
            )
    except StripeCallFailed as failure:
        raise _refused(failure, "set up the Stripe webhook endpoint") from None
    new = _NewEndpoint(connection_id, endpoint, [e.id for e in listed if e.url == url and e.id != endpoint.id], account)
    if not endpoint.secret:
        await _abandon(db, new)
        raise ValidationFailed("Stripe did not return the new webhook endpoint's signing secret; nothing was saved")
    return new


def _row_for_new(box: SecretBox, connection: StripeConnection, new: _NewEndpoint) -> WebhookEndpoint:
    """The new connection's endpoint row (its secret on the connection), for the connection's own write."""
    assert new.endpoint.secret
    now = utcnow()
    connection.webhook_secrets_encrypted = [box.encrypt(new.endpoint.secret)]
    row = WebhookEndpoint(
        connection_id=connection.id, managed=True, generation=1, retiring_endpoint_ids=sorted(new.replaces)
    )
    _note(row, new.endpoint, now)
    return row


async def _abandon(db: AppContext, new: _NewEndpoint) -> None:
    """The connection was not saved: its endpoint goes from Stripe too (what fails, a later one replaces)."""
    try:
        async with StripeCaller(db.settings, db.sessions) as caller:
            await stripe_endpoints.delete(caller, new.account, new.endpoint.id)
    except Exception:
        log.warning("could not delete an unsaved connection's webhook endpoint", exc_info=True)


async def _retire_replaced(db: AppContext, connection_id: str) -> None:
    account = await _account(db, connection_id, None)
    async with StripeCaller(db.settings, db.sessions) as caller, _lease(db, connection_id):
        await _retire(db, caller, connection_id, account)


async def shown(session: AsyncSession, connection: StripeConnection | None) -> dict[str, Any] | None:
    """The connection's `webhook_endpoint`, for a page."""
    if connection is None:
        return None
    return endpoint_to_dict(await repository.get(session, connection.id))
