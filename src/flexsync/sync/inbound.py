"""Applying Stripe customer events to flexsync customers (Stripe -> flexsync).

What an event does (CONTRACT "Stripe webhook", seed "Supported Events" and "Duplicate Prevention"):
- `customer.created`, and `customer.updated` for a Stripe customer not linked yet: link or create. A link is
  looked for in this order: the customer already linked to the Stripe id; the customer named by
  `metadata.flexprice_customer_id` (its id, then a published external_id), which is how flexsync's own pushes
  come back; with `email_matching`, the one unlinked published customer with that email. Linking an existing
  customer leaves its fields alone (it is flexsync's record; later updates flow as usual). Otherwise a customer
  is created from the Stripe data, with external_id = the flexprice id when that names no customer, else the
  Stripe id.
- `customer.updated` for a linked customer: name, email and address are copied.
- `customer.deleted`: recorded; then `on_stripe_delete`: ignore (link marked deleted), unlink, or archive.
- Other types, every event while `inbound_enabled` is off, events of Stripe's other mode (a live-mode event
  for a test-mode connection, or the reverse) and events of connected accounts (Stripe Connect): stored and
  ignored.
Stripe data that does not fit (a 3-letter country, a bad email) is left out and named in the event's note;
the event still counts as applied.

Order. Stripe delivers out of order and more than once, and its `created` has a resolution of one second.
The link remembers the newest event applied (`last_event_created`, `last_event_id`):
- the same event again, or an older one, changes nothing;
- `customer.created` precedes every other event of its customer, so in the same second it is stale too;
- an update in the same second as the last applied event cannot be ordered by its timestamp, and an update
  of a customer flexsync pushed that differs from the last push may be a late echo of an older push: in both
  cases the customer is re-fetched from Stripe and its current state applied (the event waits, queued, for
  the fetch);
- once Stripe has deleted a customer, no late event for it brings it back.
Changes are written here, never through the customer service, so nothing applied from Stripe is pushed back
to Stripe (no echo loop).

Batches. `apply_batch` applies many events in the caller's transaction with a handful of statements: the
links, candidate customers and deletions of the whole batch are read up front, new customers and links are
inserted together at the end. On PostgreSQL, `lock_customers` serialises work on one Stripe customer across
processes (transaction-scoped advisory locks, taken in a fixed order so they cannot deadlock). The batch's
lookup is planned for its values (see db.execute_planned_for_values); the switches ride on the lock statement
and on the lookup itself, so a batch costs no round trip for them.

Stored events (claiming, retrying, replaying) are webhooks/stored.py's: it calls `apply_batch`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import structlog
from sqlalchemy import (
    Table,
    TextClause,
    and_,
    bindparam,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.connections.settings import ConnectionSettings, effective_settings
from flexsync.db import (
    PLAN_AS_CONFIGURED,
    PLAN_FOR_VALUES,
    SWITCH_TO_PLANS_AS_CONFIGURED,
    SWITCH_TO_PLANS_FOR_VALUES,
    fetch_rows,
)
from flexsync.ids import new_id
from flexsync.kit.bulk import Inserts
from flexsync.kit.text import NUL
from flexsync.models import MAX_INT64, Customer, CustomerLink, StripeConnection, WebhookEvent, max_length, utcnow
from flexsync.stripe.mapping import (
    MAPPED_FIELDS,
    STRIPE_ID_KEY,
    InboundCustomer,
    changes_from_stripe,
    from_stripe,
)
from flexsync.sync import links

log = structlog.get_logger(__name__)

CUSTOMERS: Table = Customer.__table__  # type: ignore[assignment]
LINKS: Table = CustomerLink.__table__  # type: ignore[assignment]
EVENTS: Table = WebhookEvent.__table__  # type: ignore[assignment]

HANDLED_TYPES = frozenset({"customer.created", "customer.updated", "customer.deleted"})
ACTOR = "stripe"

# The columns that hold Stripe ids (webhook_events.stripe_object_id, customer_links.stripe_customer_id).
MAX_STRIPE_ID_LENGTH = min(max_length(WebhookEvent.stripe_object_id), max_length(CustomerLink.stripe_customer_id))

OutcomeStatus = Literal["applied", "ignored", "queued"]
# The Stripe customers re-fetched for a batch: their current object, or None once Stripe no longer has them.
Fetched = Mapping[str, Mapping[str, Any] | None]


@dataclass(slots=True)
class InboundEvent:
    """A verified Stripe event, as applying needs it."""

    id: str
    connection_id: str
    stripe_event_id: str
    type: str
    created: int
    data_object: Mapping[str, Any] | None
    # Stripe's `livemode` of the event; None where there is none (reconciliation reads the connection's own mode).
    livemode: bool | None = None
    # The connected account a Stripe Connect event comes from; None for an account's own events.
    account: str | None = None

    @classmethod
    def from_payload(cls, event_id: str, connection_id: str, payload: Mapping[str, Any]) -> InboundEvent:
        data = payload.get("data")
        data_object = data.get("object") if isinstance(data, Mapping) else None
        created = payload.get("created")
        livemode = payload.get("livemode")
        account = payload.get("account")
        return cls(
            id=event_id,
            connection_id=connection_id,
            stripe_event_id=str(payload["id"]),
            type=str(payload["type"]),
            # Unix seconds; anything else (a string, a float, a value no 64-bit column holds) counts as unknown.
            created=created if isinstance(created, int) and 0 <= created <= MAX_INT64 else 0,
            data_object=data_object if isinstance(data_object, Mapping) else None,
            livemode=livemode if isinstance(livemode, bool) else None,
            # Named in the event's note when refused: a NUL character written out, so the note can be stored.
            account=account.replace(NUL, "\\u0000") if isinstance(account, str) and account else None,
        )

    @property
    def stripe_object_id(self) -> str | None:
        """The Stripe id of the event's object; None unless it is one the database can hold."""
        object_id = self.data_object.get("id") if self.data_object is not None else None
        if isinstance(object_id, str) and 0 < len(object_id) <= MAX_STRIPE_ID_LENGTH and NUL not in object_id:
            return object_id
        return None


@dataclass(frozen=True, slots=True)
class Conflict:
    """A Stripe customer that could only be linked by guessing: `already_linked` (the customer it names is
    linked to another Stripe customer) or `ambiguous_email` (several unlinked customers have its email)."""

    kind: Literal["already_linked", "ambiguous_email"]
    stripe_customer_ids: tuple[str, ...]
    customer_ids: tuple[str, ...]
    message: str


@dataclass(frozen=True, slots=True)
class ApplyPolicy:
    """How far applying a Stripe customer goes. Webhooks use the defaults; reconciliation narrows them."""

    # Create a customer for a Stripe customer that no customer matches.
    create: bool = True
    # Copy a linked Stripe customer's changes onto its customer.
    update: bool = True
    # A Stripe customer whose claim cannot be honoured (see Conflict): False notes the problem and goes on to
    # email matching and creating, as a webhook must; True stops with the conflict, for a person to resolve.
    stop_at_conflict: bool = False


WEBHOOKS = ApplyPolicy()

Effect = Literal["unchanged", "linked", "created", "updated", "skipped", "conflict"]


@dataclass(slots=True)
class Outcome:
    """What applying one event did. `needs_stripe_state`: queued until the customer is re-fetched.

    `effect` says what became of the Stripe customer's flexsync side, for callers that count (reconciliation);
    `skipped`: the ApplyPolicy ruled out the change it needed."""

    status: OutcomeStatus
    note: str | None = None
    customer_id: str | None = None
    needs_stripe_state: bool = False
    effect: Effect = "unchanged"
    conflict: Conflict | None = None


def _conflict(conflict: Conflict) -> Outcome:
    return Outcome("ignored", conflict.message, effect="conflict", conflict=conflict)


def _note(*parts: str | None) -> str | None:
    text_parts = [part for part in parts if part]
    return "; ".join(text_parts) or None


# PostgreSQL: the lock statement, which also switches the plan mode (see lock_customers).
_LOCK = text(
    f"SELECT {PLAN_FOR_VALUES}, count(pg_advisory_xact_lock(k)) FROM "  # noqa: S608
    "(SELECT hashtextextended(key, 0) AS k FROM unnest(CAST(:keys AS text[])) AS key ORDER BY 1) AS s"
)


async def lock_customers(session: AsyncSession, events: Iterable[InboundEvent]) -> bool:
    """PostgreSQL: hold, until the transaction ends, a lock per Stripe customer the events touch.

    Two processes applying events of one Stripe customer then take turns, so neither decides on a state the
    other is about to change. SQLite needs nothing: a write transaction there excludes every other writer.
    The same statement has the statements after it planned for their values, for the lookup that follows
    (which puts the connection's own plan mode back); returns whether it did.
    """
    if session.get_bind().dialect.name != "postgresql":
        return False
    keys = sorted(
        {f"{e.connection_id}:{e.stripe_object_id}" for e in events if e.type in HANDLED_TYPES and e.stripe_object_id}
    )
    if not keys:
        return False
    await fetch_rows(session, _LOCK, {"keys": keys})
    return True


@dataclass(frozen=True, slots=True)
class ConnectionView:
    """What applying needs of an active connection."""

    id: str
    tenant_id: str
    environment_id: str
    settings: ConnectionSettings
    # Whether the connection's keys are live-mode ones; None: events of either mode are taken (reconciliation).
    livemode: bool | None = None
    # The Stripe account the keys belong to, once verified (`"verify": true`); None while unknown.
    stripe_account_id: str | None = None

    @classmethod
    def of(cls, connection: StripeConnection | None) -> ConnectionView | None:
        """The view of a connection that may receive events; None if it is missing, deleted or not active."""
        if connection is None or connection.deleted_at is not None or connection.status != "active":
            return None
        return cls(
            connection.id,
            connection.tenant_id,
            connection.environment_id,
            effective_settings(connection.settings),
            livemode=connection.mode == "live",
            stripe_account_id=connection.stripe_account_id,
        )

    def not_ours(self, event: InboundEvent) -> str | None:
        """Why the event is not this connection's to apply, if it is not; only a signing secret of another
        webhook endpoint, stored on this connection by mistake, lets such an event in.

        - From Stripe's other mode (test or live): test data must never reach a live environment's customers,
          nor live data a test one's.
        - From a connected account (a Stripe Connect endpoint's event, which names its `account`): the
          connection syncs the customers of its own account, whose events name none (or, for a connected
          account's own keys, that account).
        """
        if self.livemode is not None and event.livemode is not None and event.livemode != self.livemode:
            theirs, ours = ("live", "test") if event.livemode else ("test", "live")
            return (
                f"a {theirs}-mode event, and this connection is in {ours} mode: not applied (is the webhook signing "
                f"secret stored here that of a {theirs}-mode endpoint?)"
            )
        if event.account is not None and event.account != self.stripe_account_id:
            return (
                f"an event of the connected account {event.account} (Stripe Connect): not applied; this "
                "connection syncs its own account's customers (is the webhook signing secret stored here that of "
                "a Connect endpoint?)"
            )
        return None


async def apply_batch(
    session: AsyncSession,
    events: Sequence[InboundEvent],
    *,
    connections: Mapping[str, ConnectionView] | None = None,
    fetched: Fetched | None = None,
    policy: ApplyPolicy = WEBHOOKS,
    inserts: Inserts | None = None,
) -> list[Outcome]:
    """Apply `events` in the caller's transaction, after taking `lock_customers` for them.

    `connections`: views the caller has at hand (the webhook route's cache); others are read. `inserts`: the
    caller's own pending inserts, to which the new customers and links are added for the caller to write in
    the same statement as its rows; without it they are written here. Returns one outcome per event, in
    order. Raises on a database error: the caller rolls back.
    """
    pending = inserts if inserts is not None else Inserts()
    by_connection: dict[str, list[InboundEvent]] = defaultdict(list)
    for event in events:
        by_connection[event.connection_id].append(event)
    outcomes: dict[str, Outcome] = {}
    planning_for_values = await lock_customers(session, events)
    for connection_id, group in by_connection.items():
        view = (connections or {}).get(connection_id)
        if view is None:
            view = ConnectionView.of(await session.get(StripeConnection, connection_id))
        if view is None:
            for event in group:
                outcomes[event.id] = Outcome("ignored", "the Stripe connection is no longer active")
            continue
        batch = _Batch(session, view, fetched or {}, policy)
        planning_for_values = await batch.prepare(group, planning_for_values)
        for event in group:
            outcomes[event.id] = await batch.apply(event)
        await batch.finish(pending)
    if planning_for_values:  # no lookup put the connection's plan mode back
        await fetch_rows(session, SWITCH_TO_PLANS_AS_CONFIGURED, {})
    if inserts is None:
        await pending.write(session)
    return [outcomes[event.id] for event in events]


# What a batch looks up before applying, per key: (kind, table, key column, returned column, condition, keys,
# rows per key). `link`: links of these Stripe ids; `deleted`: Stripe ids that Stripe has deleted; `customer`:
# customers named by external_id or id; `email`: unlinked customers with these emails (two per email tell one
# match from several). Constants are written into the SQL so the partial indexes they select can be used.
_ENVIRONMENT = "tenant_id = :tenant_id AND environment_id = :environment_id"
# The kind of the probe's last row, which puts the plan mode back (PostgreSQL); nothing was found by it.
_PLANNED = "planned"
_PROBES = {
    "link": ("customer_links", "stripe_customer_id", "id", "connection_id = :connection_id", "stripe_ids", 1),
    "deleted": (
        "webhook_events",
        "stripe_object_id",
        "stripe_object_id",
        "connection_id = :connection_id AND type = 'customer.deleted'",
        "stripe_ids",
        1,
    ),
    "customer": ("customers", "external_id", "id", f"{_ENVIRONMENT} AND status = 'published'", "external_ids", 1),
    "named": ("customers", "id", "id", _ENVIRONMENT, "named_ids", 1),
    "email": (
        "customers",
        "lower(email)",
        "id",
        f"{_ENVIRONMENT} AND status = 'published' AND NOT EXISTS (SELECT 1 FROM customer_links AS l "  # noqa: S608
        "WHERE l.connection_id = :connection_id AND l.customer_id = customers.id)",
        "emails",
        2,
    ),
}


@lru_cache(maxsize=8)
def _probe_statement(on_postgresql: bool, named: bool, emails: bool) -> TextClause:
    """One statement for all of a batch's lookups: rows of (kind, row id).

    PostgreSQL: a LATERAL lookup per key, which only an index lookup serves, so the plan stays right however
    stale the table statistics are (a young table, in the first minutes of a deployment or a benchmark, has
    none; a plain `IN`/`= ANY` then tends to scan all of a connection's rows per lookup). The text is fixed,
    so the statement is prepared once per connection, but it is planned for each execution
    (db.execute_planned_for_values: a generic plan made while the tables were nearly empty served the customers
    lookup from `ix_customers_env_created`, the whole environment filtered); its last row puts the connection's
    own plan mode back for the statements after it. SQLite: `IN (...)`.
    """
    kinds = ["link", "deleted", "customer", *(["named"] if named else []), *(["email"] if emails else [])]
    # Only the module's constants go into the text; every value is bound.
    parts = []
    for kind in kinds:
        table, key, row_id, condition, keys, limit = _PROBES[kind]
        shown = "customer" if kind == "named" else kind
        if on_postgresql:
            parts.append(
                f"SELECT '{shown}', hit.row_id FROM unnest(CAST(:{keys} AS varchar[])) AS wanted(key) "  # noqa: S608
                f"CROSS JOIN LATERAL (SELECT {row_id} AS row_id FROM {table} "
                f"WHERE {key} = wanted.key AND {condition} LIMIT {limit}) AS hit"
            )
        else:
            parts.append(f"SELECT '{shown}', {row_id} FROM {table} WHERE {key} IN :{keys} AND {condition}")  # noqa: S608
    if on_postgresql:
        parts.append(f"SELECT '{_PLANNED}', {PLAN_AS_CONFIGURED}")
    statement = text(" UNION ALL ".join(parts))
    if on_postgresql:
        return statement
    return statement.bindparams(*(bindparam(_PROBES[kind][4], expanding=True) for kind in kinds))


class _Batch:
    """The state one connection's events in one batch share: what was read up front, what is to be written."""

    def __init__(
        self, session: AsyncSession, connection: ConnectionView, fetched: Fetched, policy: ApplyPolicy
    ) -> None:
        self.session = session
        self.connection = connection
        self.settings = connection.settings
        self.fetched = fetched
        self.policy = policy
        self.now = utcnow()
        self.on_postgresql = session.get_bind().dialect.name == "postgresql"
        self.links: dict[str, CustomerLink] = {}
        self.customers: dict[str, Customer] = {}
        self.by_external_id: dict[str, Customer] = {}
        self.unlinked_by_email: dict[str, list[Customer]] = defaultdict(list)
        self.deleted_in_stripe: set[str] = set()
        self.taken_external_ids: set[str] = set()
        self.mapped: dict[str, InboundCustomer] = {}
        # Customers created by this batch, keyed by Stripe id: inserted together in `finish`.
        self.new_customers: dict[str, dict[str, Any]] = {}
        self.new_links: dict[str, dict[str, Any]] = {}

    # -- reading up front ------------------------------------------------------------------------------------

    async def prepare(self, events: Sequence[InboundEvent], planning_for_values: bool) -> bool:
        """Read what the batch's events may need in one probe, then load only the rows it found.

        `planning_for_values`: whether the statements are being planned for their values (PostgreSQL); returns
        whether they still are (the probe switches it off)."""
        if not self.settings.inbound_enabled:
            return planning_for_values
        customer_events = [
            e
            for e in events
            if e.type in HANDLED_TYPES and e.stripe_object_id and e.data_object and not self.connection.not_ours(e)
        ]
        if not customer_events:
            return planning_for_values
        incoming = [self._incoming(e) for e in customer_events]
        stripe_ids = {c.stripe_id for c in incoming}
        named_ids = {c.flexprice_customer_id for c in incoming if c.flexprice_customer_id}
        emails = {c.fields["email"].lower() for c in incoming if c.fields["email"]}
        found: dict[str, set[str]] = defaultdict(set)
        probe = _probe_statement(self.on_postgresql, bool(named_ids), self.settings.email_matching and bool(emails))
        params = {
            "connection_id": self.connection.id,
            "tenant_id": self.connection.tenant_id,
            "environment_id": self.connection.environment_id,
            "stripe_ids": sorted(stripe_ids),
            "external_ids": sorted(stripe_ids | named_ids),
            "named_ids": sorted(named_ids),
            "emails": sorted(emails),
        }
        if self.on_postgresql and not planning_for_values:  # an earlier connection's probe switched it off
            await fetch_rows(self.session, SWITCH_TO_PLANS_FOR_VALUES, {})
        for kind, row_id in await fetch_rows(self.session, probe, params):
            found[kind].add(row_id)
        self.deleted_in_stripe = found["deleted"]
        if found["link"]:
            await self._load_links(CustomerLink.id.in_(found["link"]))
        if found["customer"] or found["email"]:
            await self._load_candidates(found["customer"] | found["email"], found["email"])
        return False

    async def _load_links(self, condition: Any) -> None:
        """The links and their customers, locked: the outbound worker and the API change them too."""
        found = await self.session.execute(
            select(CustomerLink, Customer)
            .join(Customer, Customer.id == CustomerLink.customer_id)
            .where(condition)
            .with_for_update()
        )
        for link, customer in found:
            self.links[link.stripe_customer_id] = link
            self.customers[customer.id] = customer

    async def _load_candidates(self, customer_ids: set[str], same_email: set[str]) -> None:
        """Customers an unlinked Stripe customer may be linked to, and whose external_ids a new one may not take."""
        found = await self.session.execute(select(Customer).where(Customer.id.in_(customer_ids)))
        for customer in found.scalars():
            self.customers[customer.id] = customer
            if customer.status == "published":
                self.by_external_id[customer.external_id] = customer
            if customer.id in same_email:
                self.unlinked_by_email[(customer.email or "").lower()].append(customer)

    async def _link_for(self, stripe_id: str) -> CustomerLink | None:
        if stripe_id in self.new_links:
            # Created earlier in this batch: write the new rows now and continue with the stored ones (all of
            # them: a later event of another customer created in this batch must find its link too).
            written = list(self.new_links)
            await self._insert_new()
            await self._load_links(
                and_(
                    CustomerLink.connection_id == self.connection.id,
                    CustomerLink.stripe_customer_id.in_(written),
                )
            )
        return self.links.get(stripe_id)

    def _incoming(self, event: InboundEvent) -> InboundCustomer:
        """The event's customer in flexsync's fields (Stripe's current state, when it was fetched); mapped once."""
        mapped = self.mapped.get(event.id)
        if mapped is None:
            assert event.stripe_object_id is not None and event.data_object is not None
            mapped = self.mapped[event.id] = from_stripe(self.fetched.get(event.stripe_object_id) or event.data_object)
        return mapped

    # -- applying ----------------------------------------------------------------------------------------------

    async def apply(self, event: InboundEvent) -> Outcome:
        if event.type not in HANDLED_TYPES:
            return Outcome("ignored", f"{event.type} events are not synced")
        if not self.settings.inbound_enabled:
            return Outcome("ignored", "inbound sync is turned off for this connection (settings.inbound_enabled)")
        not_ours = self.connection.not_ours(event)
        if not_ours is not None:
            return Outcome("ignored", not_ours)
        stripe_id = event.stripe_object_id
        if event.data_object is None:
            return Outcome("ignored", "the event carries no customer object")
        if stripe_id is None:
            return Outcome(
                "ignored",
                f"the customer object has no usable Stripe id (a string of 1-{MAX_STRIPE_ID_LENGTH} characters "
                "without NUL)",
            )
        if event.type == "customer.deleted":
            return await self._deleted(event, stripe_id)
        link = await self._link_for(stripe_id)
        if stripe_id in self.deleted_in_stripe:
            return Outcome(
                "applied",
                "the Stripe customer has been deleted; this older event changes nothing",
                link.customer_id if link else None,
            )
        if link is None:
            return await self._link_or_create(event, stripe_id, event.data_object)
        return self._update_linked(event, link)

    async def _deleted(self, event: InboundEvent, stripe_id: str) -> Outcome:
        self.deleted_in_stripe.add(stripe_id)
        link = await self._link_for(stripe_id)
        if link is None:
            return Outcome("applied", "no customer is linked to this Stripe customer; the deletion is recorded")
        customer = self.customers[link.customer_id]
        policy = self.settings.on_stripe_delete
        if policy == "unlink":
            await links.unlink(self.session, link, customer)
            del self.links[stripe_id]
            return Outcome("applied", "unlinked (on_stripe_delete: unlink)", customer.id)
        link.status = "deleted"
        self._advance(link, event)
        if policy == "archive" and customer.status == "published":
            customer.status = "archived"
            self._touch(customer)
            return Outcome("applied", "customer archived (on_stripe_delete: archive)", customer.id)
        return Outcome("applied", f"link marked deleted (on_stripe_delete: {policy})", customer.id)

    def _update_linked(self, event: InboundEvent, link: CustomerLink) -> Outcome:
        customer = self.customers[link.customer_id]
        stripe_id = link.stripe_customer_id
        if link.status == "deleted":
            return Outcome("applied", "the Stripe customer has been deleted; nothing to change", customer.id)
        if event.stripe_event_id == link.last_event_id:
            return Outcome("applied", "this event was applied already; nothing changed", customer.id)
        stale = event.created < link.last_event_created or (
            event.type == "customer.created" and event.created == link.last_event_created
        )
        if stale:
            return Outcome("applied", "a newer event was applied already; this one changes nothing", customer.id)
        incoming = self._incoming(event)
        if stripe_id in self.fetched:
            if self.fetched[stripe_id] is None:
                return Outcome("applied", "the customer no longer exists in Stripe; nothing changed", customer.id)
        else:
            same_second = event.created == link.last_event_created
            maybe_echo = bool(link.pushed_snapshot) and bool(changes_from_stripe(link.pushed_snapshot, incoming))
            if same_second or maybe_echo:
                return Outcome("queued", "waiting for the customer's current state from Stripe", customer.id, True)
        if not self.policy.update:
            return Outcome("ignored", "Stripe's changes are not copied (policy)", customer.id, effect="skipped")
        self._advance(link, event)
        problems = "; ".join(incoming.problems) or None
        if link.pushed_snapshot and not changes_from_stripe(link.pushed_snapshot, incoming):
            return Outcome(
                "applied", _note("matches what flexsync last pushed; nothing changed", problems), customer.id
            )
        if customer.status != "published":
            return Outcome("applied", _note("the customer is archived; not changed", problems), customer.id)
        current_fields = {name: getattr(customer, name) for name in MAPPED_FIELDS}
        changes = changes_from_stripe(current_fields, incoming)
        for name, value in changes.items():
            setattr(customer, name, value)
        if changes:
            self._touch(customer)
        return Outcome("applied", problems, customer.id, effect="updated" if changes else "unchanged")

    async def _link_or_create(self, event: InboundEvent, stripe_id: str, data_object: Mapping[str, Any]) -> Outcome:
        incoming = self._incoming(event)
        problems = list(incoming.problems)
        named_id = incoming.flexprice_customer_id
        if named_id is not None:
            named = self._named_customer(named_id)
            if named is not None:
                linked = await self._link_existing(event, named, stripe_id, problems)
                if isinstance(linked, str):
                    return Outcome("applied", _note(linked, *problems), named.id, effect="linked")
                if self.policy.stop_at_conflict:
                    message = (
                        f"Stripe customer {stripe_id} names customer {named.id} in metadata.flexprice_customer_id, "
                        f"but that customer is linked to Stripe customer {linked.existing.stripe_customer_id}"
                    )
                    stripe_ids = (stripe_id, linked.existing.stripe_customer_id)
                    return _conflict(Conflict("already_linked", stripe_ids, (named.id,), message))
        email = incoming.fields["email"]
        if self.settings.email_matching and email:
            matches = self.unlinked_by_email.get(email.lower(), [])
            if len(matches) == 1:
                match = matches[0]
                linked = await self._link_existing(event, match, stripe_id, problems)
                if isinstance(linked, str):
                    matches.clear()
                    return Outcome("applied", _note(linked, *problems), match.id, effect="linked")
                if self.policy.stop_at_conflict:
                    message = (
                        f"Stripe customer {stripe_id} has the email of customer {match.id}, "
                        f"but that customer is linked to Stripe customer {linked.existing.stripe_customer_id}"
                    )
                    stripe_ids = (stripe_id, linked.existing.stripe_customer_id)
                    return _conflict(Conflict("already_linked", stripe_ids, (match.id,), message))
            elif len(matches) > 1:
                problems.append(f"{len(matches)} unlinked customers have this email; none was linked by email")
                if self.policy.stop_at_conflict:
                    ids = tuple(sorted(customer.id for customer in matches))
                    message = (
                        f"Stripe customer {stripe_id} has the email {email}, which {len(ids)} unlinked customers "
                        f"share ({', '.join(ids)}); none was linked"
                    )
                    return _conflict(Conflict("ambiguous_email", (stripe_id,), ids, message))
        if not self.policy.create:
            return Outcome("ignored", _note("matches no customer; not imported (policy)", *problems), effect="skipped")
        customer_id = self._create(event, stripe_id, incoming)
        return Outcome("applied", _note(*problems), customer_id, effect="created")

    def _named_customer(self, named_id: str) -> Customer | None:
        by_id = self.customers.get(named_id)
        if by_id is not None and by_id.environment_id == self.connection.environment_id:
            return by_id
        return self.by_external_id.get(named_id)

    async def _link_existing(
        self, event: InboundEvent, customer: Customer, stripe_id: str, problems: list[str]
    ) -> str | links.LinkConflict:
        """Link an existing customer and say so; the conflict (with the problem noted) if it is linked to
        another Stripe customer."""
        try:
            link = await links.link(self.session, self.connection.id, customer, stripe_id)
        except links.LinkConflict as conflict:
            problems.append(
                f"customer {customer.id} is already linked to Stripe customer {conflict.existing.stripe_customer_id}"
            )
            return conflict
        self.links[stripe_id] = link
        self._advance(link, event)
        return f"linked to existing customer {customer.id}"

    def _create(self, event: InboundEvent, stripe_id: str, incoming: InboundCustomer) -> str:
        customer_id = new_id("cust")
        external_id = self._free_external_id(incoming, stripe_id)
        self.taken_external_ids.add(external_id)
        self.new_customers[stripe_id] = {
            "id": customer_id,
            "tenant_id": self.connection.tenant_id,
            "environment_id": self.connection.environment_id,
            "external_id": external_id,
            **{name: incoming.fields.get(name) for name in MAPPED_FIELDS},
            "metadata": {STRIPE_ID_KEY: stripe_id},
            "status": "published",
            "parent_customer_id": None,
            "version": 1,
            "created_at": self.now,
            "updated_at": self.now,
            "created_by": ACTOR,
            "updated_by": ACTOR,
        }
        self.new_links[stripe_id] = {
            "id": new_id("link"),
            "connection_id": self.connection.id,
            "customer_id": customer_id,
            "stripe_customer_id": stripe_id,
            "status": "linked",
            "last_event_created": event.created,
            "last_event_id": event.stripe_event_id,
            "pushed_snapshot": {},
            "last_synced_at": self.now,
            "last_error": None,
            "created_at": self.now,
            "updated_at": self.now,
        }
        return customer_id

    def _free_external_id(self, incoming: InboundCustomer, stripe_id: str) -> str:
        """The flexprice id when it names no customer, else the Stripe id; a suffix only if both are taken."""
        candidates = [incoming.flexprice_customer_id] if incoming.flexprice_customer_id else []
        for candidate in [*candidates, stripe_id]:
            if (
                candidate not in self.by_external_id
                and candidate not in self.taken_external_ids
                and candidate not in self.customers
            ):
                return candidate
        return f"{stripe_id}-{new_id('x')[2:]}"

    def _advance(self, link: CustomerLink, event: InboundEvent) -> None:
        link.last_event_created = max(link.last_event_created, event.created)
        link.last_event_id = event.stripe_event_id
        link.last_synced_at = self.now
        link.updated_at = self.now

    def _touch(self, customer: Customer) -> None:
        customer.version += 1
        customer.updated_at = self.now
        customer.updated_by = ACTOR

    # -- writing -----------------------------------------------------------------------------------------------

    def _add_new(self, inserts: Inserts) -> None:
        inserts.add(CUSTOMERS, list(self.new_customers.values()))
        inserts.add(LINKS, list(self.new_links.values()))
        self.new_customers.clear()
        self.new_links.clear()

    async def _insert_new(self) -> None:
        inserts = Inserts()
        self._add_new(inserts)
        await inserts.write(self.session)

    async def finish(self, inserts: Inserts) -> None:
        """Write what the ORM holds (changed customers and links); hand the new rows to `inserts`."""
        await self.session.flush()
        self._add_new(inserts)
