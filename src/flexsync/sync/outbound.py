"""flexsync -> Stripe: which customer changes become sync jobs, and what each job does in Stripe.

Jobs are enqueued by the customer service in the request's own transaction (see `jobs.outbox`). A worker runs a
job in three steps, so no Stripe call ever happens inside a database transaction:
  1. `prepare` (short transaction): read the customer, its connection and link; decide the Stripe request;
  2. `send` (no transaction): make the request(s) with a deterministic Idempotency-Key;
  3. `record` (short transaction): link the customer, keep what was pushed, finish the job.

Kinds: `create` (becomes an update if the customer is linked by the time it runs, e.g. by the echoed
webhook), `update` (pushes the customer's state at run time, so a burst of changes coalesces), `delete`
(archive with `on_customer_archive: delete_in_stripe`), `link` (integration_entity_mapping: adopt an existing
Stripe customer, which must exist, and stamp its metadata with `flexprice_customer_id`).

Changes that come from Stripe are applied by the inbound path, which never calls this module: no echo.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, cast

import stripe
from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.config import Settings
from flexsync.connections.accounts import stripe_account
from flexsync.connections.repository import get_live_connection
from flexsync.connections.settings import effective_settings
from flexsync.crypto import SecretBox
from flexsync.jobs import outbox
from flexsync.jobs import repository as jobs
from flexsync.jobs.service import succeed
from flexsync.kit.errors import AlreadyExists, ValidationFailed
from flexsync.models import Customer, CustomerLink, StripeConnection, SyncJob, utcnow
from flexsync.stripe import customers
from flexsync.stripe.calls import StripeAccount, StripeCaller, StripeCallFailed
from flexsync.stripe.mapping import FLEXPRICE_ID_KEY, MAPPED_FIELDS, from_stripe, to_stripe
from flexsync.sync import links

if TYPE_CHECKING:
    from stripe.params import CustomerCreateParams, CustomerUpdateParams

Action = Literal["create", "update", "delete", "link"]
# Jobs that will give the customer a link when they succeed: while one is unfinished, the customer counts
# as linked for the purpose of pushing later changes.
LINKING_KINDS = ("create", "link")


class JobFailed(Exception):
    """A job that cannot succeed by being retried as it is. The message is shown to users."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# --- Which customer changes become jobs (called inside the request's transaction) ---------------------------


async def _active_connection(session: AsyncSession, customer: Customer) -> StripeConnection | None:
    connection = await get_live_connection(session, customer.tenant_id, customer.environment_id)
    return connection if connection is not None and connection.status == "active" else None


def _alive(link: CustomerLink | None) -> CustomerLink | None:
    """The link, unless it only remembers a Stripe customer that was deleted in Stripe."""
    return link if link is not None and link.status == "linked" else None


async def _live_link(session: AsyncSession, connection_id: str, customer_id: str) -> CustomerLink | None:
    return _alive(await links.by_customer(session, connection_id, customer_id))


async def _linked_or_linking(session: AsyncSession, connection_id: str, customer_id: str) -> bool:
    if await _live_link(session, connection_id, customer_id) is not None:
        return True
    return bool(await jobs.unfinished_for_customer(session, customer_id, LINKING_KINDS))


async def _enqueue(
    session: AsyncSession, connection: StripeConnection, customer: Customer, kind: Action, **payload: Any
) -> SyncJob:
    return await outbox.enqueue(
        session,
        kind=kind,
        tenant_id=customer.tenant_id,
        environment_id=customer.environment_id,
        connection_id=connection.id,
        customer_id=customer.id,
        payload={"version": customer.version, **payload},
        # Provisional: the worker sets the key of the request it actually sends.
        idempotency_key=f"flexsync:{kind}:{customer.id}:v{customer.version}",
    )


async def on_customer_created(session: AsyncSession, customer: Customer) -> SyncJob | None:
    """A new customer is created in Stripe when the environment's connection pushes automatically."""
    connection = await _active_connection(session, customer)
    if connection is None or not effective_settings(connection.settings).outbound_enabled:
        return None
    return await _enqueue(session, connection, customer, "create")


async def request_link(session: AsyncSession, customer: Customer, stripe_customer_id: str) -> SyncJob | None:
    """integration_entity_mapping: link to an existing Stripe customer (the worker checks that it exists)."""
    connection = await _active_connection(session, customer)
    if connection is None:
        raise ValidationFailed(
            "integration_entity_mapping needs an active Stripe connection in this environment",
            {"fields": {"integration_entity_mapping": "no active Stripe connection"}},
        )
    current = await _live_link(session, connection.id, customer.id)
    if current is not None:
        if current.stripe_customer_id == stripe_customer_id:
            return None
        raise ValidationFailed(
            f"customer {customer.id} is already linked to Stripe customer {current.stripe_customer_id}",
            {"fields": {"integration_entity_mapping": "customer already linked"}},
        )
    taken = await links.by_stripe_id(session, connection.id, stripe_customer_id)
    if taken is not None:
        raise AlreadyExists(
            f"Stripe customer {stripe_customer_id} is already linked to customer {taken.customer_id}",
            {"fields": {"integration_entity_mapping": "already linked"}, "customer_id": taken.customer_id},
        )
    return await _enqueue(session, connection, customer, "link", stripe_customer_id=stripe_customer_id)


async def on_customer_changed(session: AsyncSession, customer: Customer) -> SyncJob | None:
    """A change to a field Stripe mirrors is pushed when the connection pushes updates."""
    connection = await _active_connection(session, customer)
    if connection is None or not effective_settings(connection.settings).push_updates:
        return None
    if not await _linked_or_linking(session, connection.id, customer.id):
        return None
    return await _enqueue(session, connection, customer, "update")


async def on_customer_archived(session: AsyncSession, customer: Customer) -> SyncJob | None:
    """Archiving deletes the Stripe customer when the connection says `on_customer_archive: delete_in_stripe`."""
    connection = await _active_connection(session, customer)
    if connection is None or effective_settings(connection.settings).on_customer_archive != "delete_in_stripe":
        return None
    if not await _linked_or_linking(session, connection.id, customer.id):
        return None
    return await _enqueue(session, connection, customer, "delete")


async def request_sync(session: AsyncSession, customer: Customer) -> SyncJob:
    """sync-to-stripe: create in Stripe if unlinked, else update; whatever the automatic-sync settings say.

    A sync queued for this very version of the customer and still waiting to run is returned instead of
    queueing another.
    """
    if customer.status != "published":
        raise ValidationFailed(f"customer {customer.id} is archived and is not synced to Stripe")
    connection = await _active_connection(session, customer)
    if connection is None:
        raise ValidationFailed("this environment has no active Stripe connection")
    for job in await jobs.unfinished_for_customer(session, customer.id):
        waiting = job.status == "pending" and job.attempts == 0 and job.kind in ("create", "update")
        if waiting and (job.payload or {}).get("version") == customer.version:
            return job
    linked = await _live_link(session, connection.id, customer.id) is not None
    return await _enqueue(session, connection, customer, "update" if linked else "create", manual=True)


# --- What a job does ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Push:
    """A job's Stripe work, decided in `prepare` and carried out by `send` outside any transaction."""

    job_id: str
    action: Action
    connection_id: str
    account: StripeAccount
    customer_id: str
    version: int
    stripe_customer_id: str | None
    params: dict[str, Any]
    idempotency_key: str
    # The mapped fields (flexsync names) Stripe holds once the request succeeds.
    snapshot: dict[str, Any]


@dataclass(frozen=True, slots=True)
class NothingToDo:
    result: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Pushed:
    stripe_customer_id: str
    # For a link, what Stripe holds is only known from its answer.
    snapshot: dict[str, Any] | None = None


def _customer_fields(customer: Customer) -> dict[str, Any]:
    return {
        "id": customer.id,
        "external_id": customer.external_id,
        **{name: getattr(customer, name) for name in MAPPED_FIELDS},
    }


def _idempotency_key(action: Action, job_id: str, customer: Customer, target: str | None, params: Any) -> str:
    """Same job and same request -> same key (so every retry is replayed by Stripe, never repeated); another
    job, or the same job sending other content, gets another key. Stripe keeps keys for 24 hours."""
    body = json.dumps([job_id, target, params], sort_keys=True, separators=(",", ":"))
    fingerprint = hashlib.sha256(body.encode()).hexdigest()[:16]
    return f"flexsync:{action}:{customer.id}:v{customer.version}:{fingerprint}"


async def _job_subjects(
    session: AsyncSession, job: SyncJob
) -> tuple[StripeConnection | None, Customer | None, CustomerLink | None]:
    """The job's connection, customer and the customer's link on that connection, in one query."""
    if job.connection_id is None:
        return None, None, None
    stmt = (
        select(StripeConnection, Customer, CustomerLink)
        .select_from(StripeConnection)
        .outerjoin(Customer, Customer.id == job.customer_id)
        .outerjoin(
            CustomerLink,
            and_(CustomerLink.connection_id == StripeConnection.id, CustomerLink.customer_id == Customer.id),
        )
        .where(StripeConnection.id == job.connection_id)
    )
    found = (await session.execute(stmt)).first()
    return (found[0], found[1], found[2]) if found is not None else (None, None, None)


async def prepare(session: AsyncSession, job: SyncJob, box: SecretBox, settings: Settings) -> Push | NothingToDo:
    connection, customer, any_link = await _job_subjects(session, job)
    if connection is None or connection.deleted_at is not None:
        raise JobFailed("the environment's Stripe connection was deleted")
    if connection.status != "active":
        raise JobFailed(f"the Stripe connection is {connection.status}")
    if customer is None:
        raise JobFailed(f"customer {job.customer_id} no longer exists")
    link = _alive(any_link)
    account = stripe_account(connection, box, settings)

    def push(action: Action, target: str | None, params: dict[str, Any], snapshot: dict[str, Any]) -> Push:
        key = _idempotency_key(action, job.id, customer, target, params)
        return Push(
            job.id, action, connection.id, account, customer.id, customer.version, target, params, key, snapshot
        )

    if job.kind == "delete":
        if link is None:
            return NothingToDo({"skipped": "not linked to a Stripe customer"})
        return push("delete", link.stripe_customer_id, {}, {})
    if customer.status != "published":
        return NothingToDo({"skipped": "customer is archived"})
    if job.kind == "link":
        target = str((job.payload or {})["stripe_customer_id"])
        if link is not None:
            if link.stripe_customer_id == target:
                return NothingToDo({"action": "already linked", "stripe_customer_id": target})
            raise JobFailed(f"customer {customer.id} is already linked to Stripe customer {link.stripe_customer_id}")
        taken = await links.by_stripe_id(session, connection.id, target)
        if taken is not None:
            raise JobFailed(f"Stripe customer {target} is already linked to customer {taken.customer_id}")
        return push("link", target, {"metadata": {FLEXPRICE_ID_KEY: customer.id}}, {})
    fields = _customer_fields(customer)
    snapshot = {name: fields[name] for name in MAPPED_FIELDS}
    if job.kind == "create" and link is None:
        params = to_stripe(fields, environment_id=customer.environment_id)
        return await _frozen_create(session, job, push("create", None, params, snapshot))
    if link is None:
        return NothingToDo({"skipped": "not linked to a Stripe customer"})
    params = to_stripe(fields, environment_id=customer.environment_id, for_update=True)
    return push("update", link.stripe_customer_id, params, snapshot)


async def _frozen_create(session: AsyncSession, job: SyncJob, fresh: Push) -> Push:
    """A create sends the same request on every attempt: had an earlier attempt reached Stripe, the same key
    with the same body is replayed instead of making a second customer, even if the customer changed since
    (those changes follow as an update job)."""
    frozen = (job.payload or {}).get("request")
    if frozen is None:
        frozen = {
            "version": fresh.version,
            "params": fresh.params,
            "idempotency_key": fresh.idempotency_key,
            "snapshot": fresh.snapshot,
        }
        await jobs.save_request(session, job.id, {**(job.payload or {}), "request": frozen}, fresh.idempotency_key)
    return replace(
        fresh,
        version=int(frozen["version"]),
        params=frozen["params"],
        idempotency_key=frozen["idempotency_key"],
        snapshot=frozen["snapshot"],
    )


async def send(push: Push, caller: StripeCaller) -> Pushed:
    """Carry out a job's Stripe request(s). Raises StripeCallFailed (retry or not) or JobFailed."""
    handlers = {"create": _create, "update": _update, "delete": _delete, "link": _link}
    return await handlers[push.action](replace(push, params=_canonical(push.params)), caller)


def _canonical(params: dict[str, Any]) -> dict[str, Any]:
    """Keys in sorted order at every level, so a retry encodes the very same body as the first attempt even
    when its parameters were read back from PostgreSQL JSONB (which keeps its own key order)."""
    return {key: _canonical(value) if isinstance(value, dict) else value for key, value in sorted(params.items())}


def _options(push: Push) -> stripe.RequestOptions:
    return {"idempotency_key": push.idempotency_key}


async def _create(push: Push, caller: StripeCaller) -> Pushed:
    params = cast("CustomerCreateParams", push.params)
    created = await caller.call(
        push.account, "customers.create", lambda c: c.v1.customers.create_async(params, options=_options(push))
    )
    return Pushed(stripe_customer_id=str(created.id))


def _target(push: Push) -> str:
    assert push.stripe_customer_id is not None, f"{push.action} needs a Stripe customer"
    return push.stripe_customer_id


async def _update(push: Push, caller: StripeCaller) -> Pushed:
    stripe_id, params = _target(push), cast("CustomerUpdateParams", push.params)
    try:
        await caller.call(
            push.account,
            "customers.update",
            lambda c: c.v1.customers.update_async(stripe_id, params, options=_options(push)),
        )
    except StripeCallFailed as failure:
        if failure.http_status == 404:
            raise JobFailed(f"Stripe customer {stripe_id} no longer exists ({failure.message})") from None
        raise
    return Pushed(stripe_customer_id=stripe_id)


async def _delete(push: Push, caller: StripeCaller) -> Pushed:
    stripe_id = _target(push)
    try:
        await caller.call(
            push.account, "customers.delete", lambda c: c.v1.customers.delete_async(stripe_id, options=_options(push))
        )
    except StripeCallFailed as failure:
        # Gone already (deleted in Stripe, or by an earlier attempt whose answer was lost): the goal is met.
        if failure.http_status != 404:
            raise
    return Pushed(stripe_customer_id=stripe_id)


async def _link(push: Push, caller: StripeCaller) -> Pushed:
    stripe_id = _target(push)
    try:
        adopted = await customers.adopt(caller, push.account, stripe_id, push.customer_id, push.idempotency_key)
    except customers.StripeCustomerMissing as missing:
        raise JobFailed(missing.message) from None
    return Pushed(stripe_customer_id=stripe_id, snapshot=from_stripe(adopted).fields)


async def record(session: AsyncSession, push: Push, pushed: Pushed, job: SyncJob) -> dict[str, Any]:
    """Apply a successful push: link (or unlink after a delete), keep the snapshot, coalesce covered updates.

    `job` is the running job, locked by the caller; it is finished here, in the same transaction as the link.
    """
    now = utcnow()
    customer = (
        await session.execute(select(Customer).where(Customer.id == push.customer_id).with_for_update())
    ).scalar_one()
    connection_id = push.connection_id
    snapshot = pushed.snapshot if pushed.snapshot is not None else push.snapshot
    synced = {"pushed_snapshot": snapshot, "last_synced_at": now, "last_error": None, "updated_at": now}
    if push.action == "delete":
        current = await links.by_customer(session, connection_id, customer.id)
        if current is not None and current.stripe_customer_id == pushed.stripe_customer_id:
            await links.unlink(session, current, customer)
        result = {"action": "deleted", "stripe_customer_id": pushed.stripe_customer_id}
    else:
        if push.action in LINKING_KINDS:
            try:
                link = await links.link_anew(session, connection_id, customer, pushed.stripe_customer_id, values=synced)
            except links.LinkConflict as conflict:
                raise JobFailed(str(conflict)) from None
        else:
            found = await _live_link(session, connection_id, customer.id)
            if found is None or found.stripe_customer_id != pushed.stripe_customer_id:
                raise JobFailed(f"customer {customer.id} was unlinked from {pushed.stripe_customer_id} meanwhile")
            link = found
        for name, value in synced.items():  # a link just made has these already: no UPDATE for it
            setattr(link, name, value)
        action = {"create": "created", "update": "updated", "link": "linked"}[push.action]
        result = {"action": action, "stripe_customer_id": pushed.stripe_customer_id}
        if push.action in ("create", "update"):
            # Pending updates that the state just pushed already covers need no Stripe call of their own.
            await jobs.coalesce_updates(session, customer.id, push.version, push.job_id, now)
    succeed(job, result, now)
    await session.flush()
    return result


async def note_failure(session: AsyncSession, job: SyncJob, message: str) -> None:
    """Show a push's error on the customer's link too (the job list shows it anyway)."""
    if job.connection_id is None or job.customer_id is None:
        return
    link = await links.by_customer(session, job.connection_id, job.customer_id)
    if link is not None:
        link.last_error = message
        link.updated_at = utcnow()
