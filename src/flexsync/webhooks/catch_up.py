"""Catch-up: the customer events Stripe created that no webhook delivered, listed from Stripe's Events API.

Webhooks are the fast path, this is the safety net: an endpoint Stripe disabled, or flexsync away longer
than Stripe's three days of retries, loses no change that Stripe still keeps (30 days).

A run lists each customer event type (stripe/events.py) created in a window: from the connection's cursor,
less OVERLAP_SECONDS (connections/catch_up.py), up to when the run began. Each page set (a page of every
type still listing) is ordered by `created`, then id, and its events not stored yet go down the webhook's own
path (webhooks.ingest.store_and_apply): stored once, applied once, with `source: catch_up`, under the same
ordering rules. An event a webhook delivers at the same moment is stored by whichever comes first.

One run per connection at a time, in any number of processes: the run holds a lease on the connection's
`stripe_catch_ups` row, renewed while it works; every page's transaction checks the lease and writes where
each type's listing stands (`run_position`) with the page's events, so a run stopped anywhere (a killed
process, Stripe failing past the retries) continues after its last written page. Once every type is listed
to the end, the cursor moves to the run's end. Requests go through the connection's shared rate limit
(StripeCaller); a 429, a 5xx or a network error is retried with backoff.

A cursor older than Stripe's 30 days is a gap: events of that stretch may be gone for good. The run says so
(the log, `flexsync_stripe_catch_up_gap`, the dashboard) and, with the connection's `on_catch_up_gap:
reconcile`, starts a from-Stripe reconciliation, which reads every Stripe customer; a reconciliation that
succeeds closes the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import structlog
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.connections import catch_up as state_store
from flexsync.connections.accounts import stripe_account
from flexsync.connections.settings import effective_settings
from flexsync.context import AppContext
from flexsync.ids import new_id
from flexsync.jobs.registry import Registry, Sweep, WorkerContext
from flexsync.kit.errors import AlreadyExists, APIError, NotFound, ValidationFailed
from flexsync.logs import describe_error
from flexsync.metrics import CATCH_UP_RECOVERED, CATCH_UP_RUNS, STRIPE_EVENTS
from flexsync.models import CatchUpState, StripeConnection, WebhookEvent, utcnow
from flexsync.stripe.calls import StripeAccount, StripeCaller, StripeCallFailed, stripe_call_backoff
from flexsync.stripe.events import EventsPage, list_events_page
from flexsync.sync.inbound import ConnectionView, InboundEvent, Outcome
from flexsync.webhooks import repository as events_repository
from flexsync.webhooks import stored
from flexsync.webhooks.ingest import Delivery, store_and_apply

log = structlog.get_logger(__name__)

EVENT_TYPES = ("customer.created", "customer.updated", "customer.deleted")
SOURCE = "catch_up"
DONE = "done"
# Tries of one page request that Stripe answers 429 or 5xx or that cannot reach it, backing off from 0.5 s to
# 30 s in between; past them the run stops, keeping its place, and the next interval resumes it.
MAX_PAGE_TRIES = 8
# How often a worker looks for connections whose catch-up is due or asked for, and how many it runs at once.
CHECK_SECONDS = 2.0
MAX_CONCURRENT_RUNS = 4

Progress = Callable[["Report"], None]
# Starts a from-Stripe reconciliation of the connection (locked by the caller) in the caller's transaction, or
# finds the one running; returns its id. Given by the app's wiring: reconciliation is a domain of its own.
OnGap = Callable[[AsyncSession, StripeConnection], Awaitable[str]]


class LeaseLost(Exception):
    """Another process took the catch-up over (this one was presumed dead): stop without writing."""


class Stopping(Exception):
    """The process is stopping: the run hands itself back between two page sets, keeping its place."""


@dataclass(slots=True)
class Report:
    """What a run did: events listed from Stripe, stored (new), duplicates (stored already, by a webhook or an
    earlier run) and applied; where it read (`since`, `until`, Unix seconds)."""

    connection_id: str
    since: int
    until: int
    listed: int = 0
    stored: int = 0
    duplicates: int = 0
    applied: int = 0
    ignored: int = 0
    queued: int = 0
    gap: bool = False
    reconciliation_id: str | None = None
    error: str | None = None
    # How long this process's part of the run took.
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        return {
            "listed": self.listed,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "applied": self.applied,
            "ignored": self.ignored,
            "queued": self.queued,
        }

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["since"] = state_store.from_unix(self.since).isoformat()
        body["until"] = state_store.from_unix(self.until).isoformat()
        return body


@dataclass(frozen=True, slots=True)
class _Run:
    connection: ConnectionView
    account: StripeAccount
    position: dict[str, str | None]


def new_holder(kind: str) -> str:
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


async def run_catch_up(
    db: AppContext,
    caller: StripeCaller,
    connection_id: str,
    holder: str,
    *,
    since: datetime | None = None,
    on_progress: Progress | None = None,
    on_gap: OnGap | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> Report:
    """Catch the connection up now, in this process: resume its unfinished run, or start one from its cursor
    (or from `since`). Raises NotFound, ValidationFailed (the connection is disabled), AlreadyExists (another
    process is catching it up); Stripe's failures end the run and are recorded on it and in the report. Once
    `stopping()` (a worker stopping), the run hands itself back after the page set it is storing."""
    started = time.perf_counter()
    report, run = await _begin(db, connection_id, holder, since, on_gap)
    lease = asyncio.create_task(_keep_lease(db, connection_id, holder))
    try:
        await _list_and_store(db, caller, holder, run, report, on_progress, stopping)
        await _finish(db, holder, report)
    except Stopping:
        await _stop(db, holder, report, interrupted=True)
    except LeaseLost:
        log.warning("catch-up taken over by another process", connection_id=connection_id, holder=holder)
        report.error = "taken over by another process"
    except (StripeCallFailed, Exception) as exc:
        message = exc.message if isinstance(exc, StripeCallFailed) else describe_error(exc)
        if not isinstance(exc, StripeCallFailed):
            log.exception("catch-up failed", connection_id=connection_id)
        report.error = message
        await _stop(db, holder, report)
    except asyncio.CancelledError:
        # A stopping worker or Ctrl-C: hand the run back at once, keeping its place.
        with contextlib.suppress(Exception):
            await asyncio.shield(_stop(db, holder, report, interrupted=True))
        raise
    finally:
        lease.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lease
        report.seconds = round(time.perf_counter() - started, 3)
    return report


async def _begin(
    db: AppContext, connection_id: str, holder: str, since: datetime | None, on_gap: OnGap | None
) -> tuple[Report, _Run]:
    now = utcnow()
    async with db.transaction() as session:
        connection = await session.get(StripeConnection, connection_id, with_for_update=True)
        if connection is None or connection.deleted_at is not None:
            raise NotFound(f"connection {connection_id} not found")
        view = ConnectionView.of(connection)
        if view is None:
            raise ValidationFailed(f"the Stripe connection {connection_id} is {connection.status}: enable it first")
        state = await state_store.locked(session, connection, now)
        if state.leased_by not in (None, holder) and state_store.lease_live(state, now):
            raise AlreadyExists(
                f"a catch-up of connection {connection_id} is running in another process; wait for it to finish",
                {"connection_id": connection_id},
            )
        state.leased_by = holder
        state.leased_until = now + timedelta(seconds=db.settings.job_lease_seconds)
        if since is None and state.requested_at is not None and state.requested_since is not None:
            since = state_store.from_unix(state.requested_since)
        state.requested_at, state.requested_since = None, None
        report_gap, reconciliation_id = False, None
        if since is not None or state.run_position is None:
            if since is None:
                start = state.cursor - state_store.OVERLAP_SECONDS
                if now - state_store.from_unix(state.cursor) > state_store.STRIPE_EVENT_RETENTION:
                    report_gap = True
                    reconciliation_id = await _found_gap(session, connection, state, now, on_gap)
            else:
                start = state_store.unix(since)
            state.run_since, state.run_until = start, state_store.unix(now)
            state.run_position = dict.fromkeys(EVENT_TYPES)
        state.updated_at = now
        assert state.run_since is not None and state.run_until is not None
        report = Report(connection_id, state.run_since, state.run_until, gap=report_gap)
        report.reconciliation_id = reconciliation_id
        account = stripe_account(connection, db.box, db.settings)
        return report, _Run(view, account, dict(state.run_position or {}))


async def _found_gap(
    session: AsyncSession, connection: StripeConnection, state: CatchUpState, now: datetime, on_gap: OnGap | None
) -> str | None:
    """Record a gap; start the reconciliation the connection's settings ask for. Returns its id."""
    state.gap_since, state.gap_detected_at = state.cursor, now
    since = state_store.from_unix(state.cursor).isoformat()
    if effective_settings(connection.settings).on_catch_up_gap != "reconcile":
        log.warning(
            "catch-up gap: the cursor is older than the 30 days of events Stripe keeps; changes made in Stripe "
            "since then may be missing: run a from-Stripe reconciliation",
            connection_id=connection.id,
            since=since,
        )
        return None
    if on_gap is None:
        log.warning("catch-up gap: no reconciliation can be started from here", connection_id=connection.id)
        return None
    reconciliation_id = await on_gap(session, connection)
    log.warning(
        "catch-up gap: the cursor is older than the 30 days of events Stripe keeps; a from-Stripe reconciliation "
        "runs (on_catch_up_gap: reconcile)",
        connection_id=connection.id,
        since=since,
        reconciliation_id=reconciliation_id,
    )
    return reconciliation_id


async def _list_and_store(
    db: AppContext,
    caller: StripeCaller,
    holder: str,
    run: _Run,
    report: Report,
    on_progress: Progress | None,
    stopping: Callable[[], bool],
) -> None:
    """List page set after page set, the next one fetched while the current one is stored."""

    def fetch(position: Mapping[str, str | None]) -> asyncio.Task[dict[str, EventsPage]] | None:
        listing = [event_type for event_type, after in position.items() if after != DONE]
        if not listing:
            return None
        return asyncio.create_task(_fetch_set(caller, run.account, report, position, listing))

    position = dict(run.position)
    upcoming = fetch(position)
    try:
        while upcoming is not None:
            if stopping():
                raise Stopping()
            pages = await upcoming
            for event_type, page in pages.items():
                position[event_type] = page.last_id if page.has_more else DONE
            upcoming = fetch(dict(position))
            await _store_page_set(db, caller, holder, run, report, pages, dict(position))
            if on_progress is not None:
                on_progress(report)
    finally:
        if upcoming is not None:
            upcoming.cancel()
            with contextlib.suppress(asyncio.CancelledError, StripeCallFailed):
                await upcoming


async def _fetch_set(
    caller: StripeCaller,
    account: StripeAccount,
    report: Report,
    position: Mapping[str, str | None],
    listing: list[str],
) -> dict[str, EventsPage]:
    pages = await asyncio.gather(
        *(_fetch_page(caller, account, report, event_type, position[event_type]) for event_type in listing),
        return_exceptions=True,
    )
    for page in pages:
        if isinstance(page, BaseException):
            raise page
    return {event_type: page for event_type, page in zip(listing, pages, strict=True) if isinstance(page, EventsPage)}


async def _fetch_page(
    caller: StripeCaller, account: StripeAccount, report: Report, event_type: str, after: str | None
) -> EventsPage:
    tries = 0
    while True:
        tries += 1
        try:
            return await list_events_page(
                caller,
                account,
                event_type=event_type,
                created_gte=report.since,
                created_lte=report.until,
                starting_after=after,
            )
        except StripeCallFailed as failure:
            if not failure.retryable or tries >= MAX_PAGE_TRIES:
                raise
            delay = stripe_call_backoff(tries)
            log.info(
                "listing Stripe events: retrying",
                connection_id=report.connection_id,
                error=failure.message,
                retry_in=round(delay, 2),
            )
            await asyncio.sleep(delay)


def _ordered(pages: Mapping[str, EventsPage]) -> list[dict[str, Any]]:
    """The page set's events, oldest first: Stripe lists newest first, localstripe oldest first."""
    unique = {str(event["id"]): event for page in pages.values() for event in page.events}

    def key(event: dict[str, Any]) -> tuple[int, str]:
        created = event.get("created")
        return (created if isinstance(created, int) else 0, str(event["id"]))

    return sorted(unique.values(), key=key)


async def _stored_ids(db: AppContext, connection_id: str, stripe_event_ids: list[str]) -> set[str]:
    if not stripe_event_ids:
        return set()
    async with db.read() as session:
        stmt = select(WebhookEvent.stripe_event_id).where(
            WebhookEvent.connection_id == connection_id, WebhookEvent.stripe_event_id.in_(stripe_event_ids)
        )
        return set((await session.execute(stmt)).scalars())


async def _held(session: AsyncSession, connection_id: str, holder: str) -> CatchUpState:
    state = await session.get(CatchUpState, connection_id, with_for_update=True)
    if state is None or state.leased_by != holder:
        raise LeaseLost(connection_id)
    return state


async def _store_page_set(
    db: AppContext,
    caller: StripeCaller,
    holder: str,
    run: _Run,
    report: Report,
    pages: Mapping[str, EventsPage],
    position: dict[str, str | None],
) -> None:
    """Store and apply the page set's new events and move the run's position past it, in one transaction."""
    connection_id = run.connection.id
    events = _ordered(pages)
    report.listed += len(events)
    known = await _stored_ids(db, connection_id, [str(event["id"]) for event in events])
    deliveries = [
        Delivery(
            event=InboundEvent.from_payload(new_id(events_repository.EVENT_ID_PREFIX), connection_id, event),
            connection=run.connection,
            payload=orjson.dumps(event).decode(),
            source=SOURCE,
        )
        for event in events
        if event["id"] not in known
    ]

    async def advance(session: AsyncSession) -> None:
        state = await _held(session, connection_id, holder)
        state.run_position = position
        state.updated_at = utcnow()

    try:
        statuses, queued = await store_and_apply(db.transaction, deliveries, advance)
    except LeaseLost:
        raise
    except Exception as exc:
        # As a webhook batch: store without applying, for the retry sweep to apply.
        log.warning("applying caught-up events failed; storing them to apply later", error=describe_error(exc))
        statuses, queued = await _store_only(db, deliveries, advance)
    report.duplicates += len(events) - len(deliveries)
    new = [status for status in statuses.values() if status != "duplicate"]
    report.duplicates += len(statuses) - len(new)
    report.stored += len(new)
    report.applied += new.count("applied")
    report.ignored += new.count("ignored")
    for status in statuses.values():
        STRIPE_EVENTS.labels(SOURCE, status).inc()
    if known:
        STRIPE_EVENTS.labels(SOURCE, "duplicate").inc(len(events) - len(deliveries))
    if new:
        CATCH_UP_RECOVERED.labels(connection_id).inc(len(new))
    if queued:
        await stored.apply_queued_events(db, queued, caller=caller)
        async with db.read() as session:
            stmt = select(WebhookEvent.status).where(WebhookEvent.id.in_(queued))
            after = list((await session.execute(stmt)).scalars())
        report.applied += after.count("applied")
        report.ignored += after.count("ignored")
        report.queued += len(after) - after.count("applied") - after.count("ignored")


async def _store_only(
    db: AppContext, deliveries: list[Delivery], advance: Callable[[AsyncSession], Any]
) -> tuple[dict[str, str], list[str]]:
    queued = Outcome("queued", "stored; applying failed at first and is retried")
    async with db.transaction() as session:
        inserted = await events_repository.insert_events(session, [d.row(queued) for d in deliveries])
        await advance(session)
    statuses = {d.event.id: "queued" if d.event.id in inserted else "duplicate" for d in deliveries}
    return statuses, [event_id for event_id in statuses if event_id in inserted]


async def _finish(db: AppContext, holder: str, report: Report) -> None:
    now = utcnow()
    async with db.transaction() as session:
        state = await _held(session, report.connection_id, holder)
        state.cursor = max(state.cursor, report.until)
        state.run_position, state.run_since, state.run_until = None, None, None
        state.run_counts = report.counts()
        state.last_run_at, state.last_error = now, None
        state.leased_by, state.leased_until, state.updated_at = None, None, now
    CATCH_UP_RUNS.labels("succeeded").inc()
    log.info("catch-up finished", connection_id=report.connection_id, **report.counts())


async def _stop(db: AppContext, holder: str, report: Report, *, interrupted: bool = False) -> None:
    """Record why the run stopped and hand it back; it keeps its place for the next run."""
    now = utcnow()
    async with db.transaction() as session:
        state = await session.get(CatchUpState, report.connection_id, with_for_update=True)
        if state is None or state.leased_by != holder:
            return
        if not interrupted:
            state.last_run_at, state.last_error = now, report.error
        state.leased_by, state.leased_until, state.updated_at = None, None, now
    if not interrupted:
        CATCH_UP_RUNS.labels("failed").inc()
        log.warning("catch-up stopped", connection_id=report.connection_id, error=report.error, **report.counts())


async def _keep_lease(db: AppContext, connection_id: str, holder: str) -> None:
    interval = db.settings.job_lease_seconds / 3
    while True:
        await asyncio.sleep(interval)
        try:
            async with db.transaction() as session:
                state = await session.get(CatchUpState, connection_id, with_for_update=True)
                if state is None or state.leased_by != holder:
                    return
                state.leased_until = utcnow() + timedelta(seconds=db.settings.job_lease_seconds)
        except Exception:
            log.exception("could not renew the catch-up's lease", connection_id=connection_id)


# --- In the worker: every interval, at start, and when asked for ----------------------------------------------


async def due_connections(db: AppContext, now: datetime, interval: float, *, at_start: bool) -> list[str]:
    """Active connections whose catch-up should run now and that no process is running: asked for (API),
    left unfinished by a process that stopped, or last run (else made) `interval` seconds ago or more (all of
    them at a worker's start); with `interval` 0 only those asked for or unfinished."""
    state = CatchUpState
    free = or_(state.leased_until.is_(None), state.leased_until <= now)
    wanted = [state.requested_at.is_not(None), and_(state.run_position.is_not(None), state.last_error.is_(None))]
    if interval > 0:
        a_while_ago = now - timedelta(seconds=interval)
        # Never caught up: due an interval after the connection was made (its cursor starts there).
        wanted.append(and_(state.connection_id.is_(None), StripeConnection.created_at <= a_while_ago))
        wanted.append(and_(state.last_run_at.is_(None), state.created_at <= a_while_ago))
        wanted.append(state.last_run_at <= a_while_ago)
        if at_start:
            wanted = [state.connection_id.is_(None), state.connection_id.is_not(None)]
    stmt = (
        select(StripeConnection.id)
        .outerjoin(state, state.connection_id == StripeConnection.id)
        .where(
            StripeConnection.deleted_at.is_(None),
            StripeConnection.status == "active",
            or_(state.connection_id.is_(None), free),
            or_(*wanted),
        )
        # Asked for first, then the longest waiting: a few busy connections cannot keep the others waiting.
        .order_by(state.requested_at.is_(None), state.last_run_at.nulls_first(), StripeConnection.id)
    )
    async with db.read() as session:
        return list((await session.execute(stmt)).scalars())


class CatchUpSweep:
    """The worker's catch-ups, as a sweep of its own task (jobs/registry.py): every CHECK_SECONDS the due
    connections are caught up, a few at a time; at a worker's first pass, every active connection."""

    def __init__(self, on_gap: OnGap | None):
        self._on_gap = on_gap
        self._started: set[str] = set()

    async def __call__(self, work: WorkerContext) -> None:
        db = work.ctx
        interval = db.settings.stripe_catchup_interval_seconds
        at_start = work.holder not in self._started
        self._started.add(work.holder)
        due = await due_connections(db, utcnow(), interval, at_start=at_start)
        semaphore = asyncio.Semaphore(MAX_CONCURRENT_RUNS)

        async def run(connection_id: str) -> None:
            async with semaphore:
                if not work.stopping():
                    await self._run(work, connection_id)

        await asyncio.gather(*(run(connection_id) for connection_id in due))

    async def _run(self, work: WorkerContext, connection_id: str) -> None:
        try:
            await run_catch_up(
                work.ctx, work.caller, connection_id, work.holder, on_gap=self._on_gap, stopping=work.stopping
            )
        except (AlreadyExists, NotFound, ValidationFailed):
            pass  # another process has it, or the connection went away or was disabled meanwhile
        except APIError as exc:
            log.warning("catch-up could not start", connection_id=connection_id, error=exc.message)
        except Exception:
            log.exception("catch-up crashed", connection_id=connection_id)


def register(registry: Registry, on_gap: OnGap | None) -> None:
    registry.sweep(Sweep("catching up from Stripe's Events API", CHECK_SECONDS, CatchUpSweep(on_gap), own_task=True))
