"""Reconciliation: bring an existing Stripe account and flexsync's customers together, one page at a time.

A run makes two passes; every page is decided and written in one transaction together with the run's place
(`phase`, `cursor`), so an interrupted run continues after its last page (reconcile/runner.py drives them):

1. `stripe`: every Stripe customer, 100 per request through the connection's rate limiter. A page goes
   through the webhook path's own rules (`inbound.apply_batch`, as if Stripe had sent each customer's current
   state): linked by Stripe id; else linked to the customer its metadata.flexprice_customer_id names (by id,
   then external_id); else, with email_matching, to the one unlinked customer with its email; else imported.
   A linked customer takes Stripe's data when Stripe is newer: Stripe differs from flexsync and from what
   flexsync last pushed (the link's pushed_snapshot). When Stripe still equals that snapshot but flexsync
   differs, flexsync is newer and an update job is queued instead. A customer linked by this run whose data
   differs from its Stripe customer's takes Stripe's data (what the webhook path does on that Stripe
   customer's next change), or, in a run that only pushes, has its own pushed. A Stripe customer that could
   only be linked by guessing is a conflict: reported, and left alone.
2. `customers`: every published customer of the environment with no link, in creation order (keyset on
   created_at and id), gets a create job in the outbox, so the worker pushes it with its idempotency keys and
   rate limit.

Directions: `from-stripe` links, imports and takes Stripe's newer data; `to-stripe` links (linking is what
keeps a push from duplicating a Stripe customer) and pushes flexsync's newer data and unlinked customers;
`both` does all of it.

Counts: every Stripe customer and every unlinked customer looked at counts once: `linked`, `imported`,
`updated` (Stripe's data copied), `pushed` (a create or update job queued), `unchanged` (nothing to do, a job
already waiting, or only another direction would act), or `conflicts`.

Conflicts: `already_linked` (a Stripe customer names, or has the email of, a customer linked to another
Stripe customer; the first Stripe customer seen keeps it), `ambiguous_email` (several unlinked customers share
its email), `archived_customer` (a Stripe customer linked to an archived customer). A customer a conflict
names is not pushed by the same run.

A dry run takes the same decisions in transactions that are rolled back. What its earlier pages would have
linked or imported is remembered (`Claims`) and written again into a later page's rolled-back transaction when
that page's decisions depend on it, so the report is the one a real run would give.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from sqlalchemy import Table, insert
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.connections.settings import effective_settings
from flexsync.ids import new_id
from flexsync.models import Customer, CustomerLink, StripeConnection, utcnow
from flexsync.stripe.calls import StripeAccount, StripeCaller, StripeCallFailed
from flexsync.stripe.mapping import MAPPED_FIELDS, InboundCustomer, changes_from_stripe, from_stripe
from flexsync.sync import inbound, outbound, repository

Direction = Literal["both", "from-stripe", "to-stripe"]
Phase = Literal["stripe", "customers", "done"]

PAGE_SIZE = 100
# Attempts at listing one page before the run stops (and is retried later from its cursor): 429s and 5xx
# back off 0.5 s, 1 s, 2 s, 4 s in between.
LIST_ATTEMPTS = 5
COUNT_KEYS = ("linked", "imported", "updated", "pushed", "unchanged", "conflicts")
# The report keeps the details of this many conflicts (all are counted).
MAX_REPORTED_CONFLICTS = 1000
# Jobs that will push a customer: while one is waiting, another push would be redundant.
PUSHING_UNLINKED = ("create", "link")
PUSHING_LINKED = ("create", "update", "link")

CUSTOMERS: Table = Customer.__table__  # type: ignore[assignment]
LINKS: Table = CustomerLink.__table__  # type: ignore[assignment]


def pulls(direction: str) -> bool:
    """Does the direction import Stripe customers and take Stripe's newer data?"""
    return direction in ("both", "from-stripe")


def pushes(direction: str) -> bool:
    """Does the direction push flexsync's newer data and unlinked customers to Stripe?"""
    return direction in ("both", "to-stripe")


def next_phase(phase: str, direction: str) -> Phase:
    """The pass after `phase`: unlinked customers are pushed only by directions that push."""
    return "customers" if phase == "stripe" and pushes(direction) else "done"


# --- Listing Stripe -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StripePage:
    customers: list[dict[str, Any]]
    # The last id Stripe listed (deleted objects included): where the next page starts.
    last_id: str | None
    has_more: bool
    # The time of the state the page shows, on Stripe's clock (whole seconds, as its events have it).
    observed_at: int


async def list_stripe_page(caller: StripeCaller, account: StripeAccount, starting_after: str | None) -> StripePage:
    """One page of Stripe customers after `starting_after`, retrying 429s and 5xx a few times with backoff.

    `GET /v1/customers` goes through the SDK's `raw_request_async`, which answers the parsed JSON: the typed
    objects of `customers.list_async` cost much CPU per page (each customer holds several nested objects)
    only to be turned back into dicts here. Errors are the SDK's own either way.
    Raises StripeCallFailed when Stripe keeps failing or refuses the request."""
    params: dict[str, Any] = {"limit": PAGE_SIZE}
    if starting_after is not None:
        params["starting_after"] = starting_after
    attempt = 0
    while True:
        attempt += 1
        requested_at = int(time.time()) - 1
        try:
            response = await caller.call(
                account,
                "customers.list",
                lambda c: c.raw_request_async("get", "/v1/customers", **params),
            )
        except StripeCallFailed as failure:
            if not failure.retryable or attempt >= LIST_ATTEMPTS:
                raise
            await asyncio.sleep(caller.backoff(attempt))
            continue
        listed: list[dict[str, Any]] = response.data["data"]
        return StripePage(
            customers=[customer for customer in listed if not customer.get("deleted")],
            last_id=str(listed[-1]["id"]) if listed else None,
            has_more=bool(response.data.get("has_more")) and bool(listed),
            observed_at=_stripe_time(response.headers, requested_at),
        )


def _stripe_time(headers: Mapping[str, str], fallback: int) -> int:
    """The second before the response's Date header, on Stripe's clock (which orders its events; ours may be
    off): every event of an earlier second is older than the page, while one of the same second may be newer,
    so the page never wins over an event it cannot be sure is older."""
    date = next((value for key, value in headers.items() if key.lower() == "date"), None)
    try:
        return int(parsedate_to_datetime(date).timestamp()) - 1 if date else fallback
    except (TypeError, ValueError):
        return fallback


# --- One page's decisions -----------------------------------------------------------------------------------


@dataclass(slots=True)
class PageResult:
    counts: Counter[str] = field(default_factory=Counter)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    processed: int = 0
    # Where the pass stands after this page; None once the pass is over.
    cursor: str | None = None


@dataclass(slots=True)
class Claims:
    """A dry run's memory of what its earlier pages would have written (a real run finds it in the database)."""

    # Existing customers linked: customer id -> Stripe id, and the keys a later page may find them by.
    linked: dict[str, str] = field(default_factory=dict)
    linked_by_external_id: dict[str, str] = field(default_factory=dict)
    linked_by_email: dict[str, set[str]] = field(default_factory=dict)
    # Customers imported: their external_id -> the Stripe id they came from.
    imported: dict[str, str] = field(default_factory=dict)

    def link(self, stripe_id: str, customer: Customer) -> None:
        self.linked[customer.id] = stripe_id
        self.linked_by_external_id[customer.external_id] = customer.id
        if customer.email:
            self.linked_by_email.setdefault(customer.email.lower(), set()).add(customer.id)

    def relevant_to(
        self, stripe_ids: set[str], named: set[str], emails: set[str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The claims a page's decisions can meet: linked customers it names (by id or external_id) or shares an
        email with (customer id -> Stripe id), and imported external_ids it names or might take."""
        names = named | stripe_ids
        customer_ids = {cid for cid in named if cid in self.linked}
        customer_ids |= {self.linked_by_external_id[name] for name in names if name in self.linked_by_external_id}
        for email in emails:
            customer_ids |= self.linked_by_email.get(email, set())
        linked = {cid: self.linked[cid] for cid in customer_ids}
        imported = {name: self.imported[name] for name in names if name in self.imported}
        return linked, imported


class Reconciler:
    """Decides and writes one page at a time, in the caller's transaction (which the caller commits, or rolls
    back for a dry run)."""

    def __init__(
        self,
        connection: StripeConnection,
        *,
        run_id: str,
        direction: str,
        dry_run: bool,
        conflicted_customers: set[str],
    ) -> None:
        self.connection = connection
        self.run_id = run_id
        self.direction = direction
        self.dry_run = dry_run
        self.settings = effective_settings(connection.settings)
        # The inbound rules apply whatever `inbound_enabled` says: reconciling is a manual, explicit action.
        self.view = inbound.ConnectionView(
            connection.id,
            connection.tenant_id,
            connection.environment_id,
            self.settings.model_copy(update={"inbound_enabled": True}),
        )
        self.policy = inbound.ApplyPolicy(create=pulls(direction), update=pulls(direction), stop_at_conflict=True)
        self.conflicted_customers = conflicted_customers
        self.claims = Claims()

    # -- pass 1: Stripe customers ----------------------------------------------------------------------------

    async def apply_stripe_page(self, session: AsyncSession, page: StripePage) -> PageResult:
        result = PageResult(processed=len(page.customers), cursor=page.last_id if page.has_more else None)
        if not page.customers:
            return result
        by_id = {str(customer["id"]): customer for customer in page.customers}
        events = [
            inbound.InboundEvent(
                id=stripe_id,
                connection_id=self.connection.id,
                stripe_event_id=self.run_id,
                type="customer.updated",
                created=page.observed_at,
                data_object=customer,
            )
            for stripe_id, customer in by_id.items()
        ]
        if self.dry_run:
            # The replay writes before applying does: it takes the Stripe customers' locks first (apply_batch
            # takes them again, harmlessly); a real run leaves the locking to apply_batch.
            await inbound.lock_customers(session, events)
            await self._replay_claims(session, page.customers)
        outcomes = await self._apply(session, events, by_id)
        newly_linked = [event for event, outcome in zip(events, outcomes, strict=True) if outcome.effect == "linked"]
        if newly_linked and pulls(self.direction):
            # A customer just linked takes its Stripe customer's data, as the webhook path has it do on the Stripe
            # customer's next change (applied here as that later event), so the next run finds nothing to do.
            await self._apply(
                session, [replace(event, stripe_event_id=f"{self.run_id}:linked") for event in newly_linked], by_id
            )
        to_inspect = {
            event.id
            for event, outcome in zip(events, outcomes, strict=True)
            if outcome.effect in ("unchanged", "skipped", "linked") or (self.dry_run and outcome.effect == "created")
        }
        found_links = await repository.links_with_customers(session, self.connection.id, to_inspect)
        linked_now = {link.stripe_customer_id: (link, customer) for link, customer in found_links}
        flexsync_newer: list[Customer] = []
        # Customers just linked whose data differs from Stripe's, in a run that pushes but does not pull.
        pushed_on_link: list[Customer] = []
        for event, outcome in zip(events, outcomes, strict=True):
            found = linked_now.get(event.id)
            if outcome.conflict is not None:
                conflict = outcome.conflict
                self._conflict(
                    result, conflict.kind, conflict.stripe_customer_ids, conflict.customer_ids, conflict.message
                )
            elif found is not None and found[1].status != "published":
                customer = found[1]
                message = (
                    f"Stripe customer {event.id} is linked to customer {customer.id}, which is archived: "
                    "Stripe's data is not copied to it and it is not pushed"
                )
                self._conflict(result, "archived_customer", (event.id,), (customer.id,), message)
                if outcome.effect == "linked":
                    self._claim_link(event.id, customer)
            elif outcome.effect == "linked":
                result.counts["linked"] += 1
                if found is not None:
                    self._claim_link(event.id, found[1])
                    if not pulls(self.direction) and _differs_from_stripe(found[1], from_stripe(by_id[event.id])):
                        pushed_on_link.append(found[1])
            elif outcome.effect == "created":
                result.counts["imported"] += 1
                if found is not None and self.dry_run:
                    self.claims.imported[found[1].external_id] = event.id
            elif outcome.effect == "updated":
                result.counts["updated"] += 1
            elif found is not None and pushes(self.direction) and _flexsync_newer(*found, by_id[event.id]):
                flexsync_newer.append(found[1])
            else:
                result.counts["unchanged"] += 1
        queued = await self._queue_pushes(session, flexsync_newer, PUSHING_LINKED)
        result.counts["pushed"] += len(queued)
        result.counts["unchanged"] += len(flexsync_newer) - len(queued)
        await self._queue_pushes(session, pushed_on_link, PUSHING_LINKED)
        return result

    async def _apply(
        self, session: AsyncSession, events: list[inbound.InboundEvent], by_id: Mapping[str, Mapping[str, Any]]
    ) -> list[inbound.Outcome]:
        return await inbound.apply_batch(
            session, events, connections={self.connection.id: self.view}, fetched=by_id, policy=self.policy
        )

    async def _replay_claims(self, session: AsyncSession, customers: Sequence[Mapping[str, Any]]) -> None:
        """Dry run: write again, into this page's rolled-back transaction, what earlier pages would have linked or
        imported and this page's decisions depend on."""
        incoming = [from_stripe(customer) for customer in customers]
        named = {c.flexprice_customer_id for c in incoming if c.flexprice_customer_id}
        emails = {c.fields["email"].lower() for c in incoming if c.fields["email"] and self.settings.email_matching}
        linked, imported = self.claims.relevant_to({c.stripe_id for c in incoming}, named, emails)
        now = utcnow()
        pairs = [(stripe_id, customer_id) for customer_id, stripe_id in linked.items()]
        new_customers = []
        for external_id, stripe_id in imported.items():
            customer_id = new_id("cust")
            pairs.append((stripe_id, customer_id))
            new_customers.append(
                {
                    "id": customer_id,
                    "tenant_id": self.connection.tenant_id,
                    "environment_id": self.connection.environment_id,
                    "external_id": external_id,
                    "name": external_id,
                    "metadata": {},
                    "status": "published",
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                    "created_by": inbound.ACTOR,
                    "updated_by": inbound.ACTOR,
                }
            )
        if new_customers:
            await session.execute(insert(CUSTOMERS), new_customers)
        if pairs:
            await session.execute(
                insert(LINKS),
                [
                    {
                        "id": new_id("link"),
                        "connection_id": self.connection.id,
                        "customer_id": customer_id,
                        "stripe_customer_id": stripe_id,
                        "status": "linked",
                        "last_event_created": 0,
                        "pushed_snapshot": {},
                        "created_at": now,
                        "updated_at": now,
                    }
                    for stripe_id, customer_id in pairs
                ],
            )

    def _claim_link(self, stripe_id: str, customer: Customer) -> None:
        if self.dry_run:
            self.claims.link(stripe_id, customer)

    def _conflict(
        self,
        result: PageResult,
        kind: str,
        stripe_ids: Sequence[str],
        customer_ids: Sequence[str],
        message: str,
    ) -> None:
        result.counts["conflicts"] += 1
        self.conflicted_customers.update(customer_ids)
        result.conflicts.append(
            {
                "kind": kind,
                "stripe_customer_ids": list(stripe_ids),
                "customer_ids": list(customer_ids),
                "message": message,
            }
        )

    # -- pass 2: unlinked customers --------------------------------------------------------------------------

    async def push_customers_page(self, session: AsyncSession, after: str | None) -> PageResult:
        """Queue a create job for each unlinked customer of the next page of customers after `after`."""
        connection = self.connection
        customers = await repository.published_customers_after(
            session, connection.tenant_id, connection.environment_id, after, PAGE_SIZE
        )
        linked = await repository.linked_customer_ids(session, connection.id, [customer.id for customer in customers])
        # A dry run's customers "linked" by the Stripe pass are still unlinked here: they count as linked too.
        unlinked = [c for c in customers if c.id not in linked and c.id not in self.claims.linked]
        candidates = [customer for customer in unlinked if customer.id not in self.conflicted_customers]
        queued = await self._queue_pushes(session, candidates, PUSHING_UNLINKED)
        result = PageResult(processed=len(unlinked), cursor=customers[-1].id if len(customers) == PAGE_SIZE else None)
        result.counts["pushed"] += len(queued)
        result.counts["unchanged"] += len(unlinked) - len(queued)
        return result

    async def _queue_pushes(
        self, session: AsyncSession, customers: Sequence[Customer], waiting_kinds: Sequence[str]
    ) -> set[str]:
        """Queue a sync job (create if unlinked, else update) for each customer that has none waiting; returns
        the ids of the customers queued."""
        waiting = await repository.customers_with_unfinished_jobs(
            session, [customer.id for customer in customers], waiting_kinds
        )
        queued = set()
        for customer in customers:
            if customer.id not in waiting:
                await outbound.request_sync(session, customer)
                queued.add(customer.id)
        return queued


def _differs_from_stripe(customer: Customer, incoming: InboundCustomer) -> bool:
    current = {name: getattr(customer, name) for name in MAPPED_FIELDS}
    return bool(changes_from_stripe(current, incoming))


def _flexsync_newer(link: CustomerLink, customer: Customer, stripe_customer: Mapping[str, Any]) -> bool:
    """Stripe still shows what flexsync last pushed, and flexsync has changed since."""
    if link.status != "linked" or customer.status != "published" or not link.pushed_snapshot:
        return False
    incoming = from_stripe(stripe_customer)
    return not changes_from_stripe(link.pushed_snapshot, incoming) and _differs_from_stripe(customer, incoming)
