"""Group commit: concurrent deliveries made durable, and applied, together in one transaction.

Each verified delivery is queued and its request waits. A committer task takes everything queued (up to
MAX_BATCH) and, in one transaction: applies the events (`sync.inbound.apply_batch`, which first locks the
Stripe customers involved on PostgreSQL), and inserts them with their outcome in one
`INSERT ... ON CONFLICT DO NOTHING RETURNING`; if an event was stored already, the batch is redone without
it. Only after the commit is any request answered: applied, ignored, queued (waiting for Stripe's current
state) or duplicate. While a batch commits the next one fills up, so batches grow with the load and the cost
per event falls; with COMMITTERS tasks the next batch need not wait for the previous commit to start its own
(two batches touching one Stripe customer take turns on its lock; the same event in both is stored by
the first and answered `duplicate` by the second).

If applying fails, the batch is stored without being applied (status `queued`) and handed to the applier,
so a bad event or a database hiccup costs a retry, never an event. Only when even storing fails does a
request get a 500, and Stripe delivers again later.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.context import AppContext
from flexsync.kit.bulk import Inserts
from flexsync.logs import describe_error
from flexsync.metrics import STRIPE_EVENTS, WEBHOOK_BATCH, WEBHOOK_EVENTS
from flexsync.models import utcnow
from flexsync.sync import inbound
from flexsync.sync.inbound import ConnectionView, InboundEvent, Outcome
from flexsync.webhooks import repository, stored

log = structlog.get_logger(__name__)

MAX_BATCH = 256
# Batches in flight at once. Two overlap one batch's round trips to PostgreSQL with the next one's Python
# work, for more events/s (BENCHMARKS.md); three made smaller batches and no gain.
COMMITTERS = 2
# SQLite has one writer: a second committer only waits for the first in SQLite's busy handler, which polls with
# sleeps: one committer gives more events/s and a lower p99 (BENCHMARKS.md).
SQLITE_COMMITTERS = 1
STOP_TIMEOUT_SECONDS = 10.0
# How long a batch about to start may wait for more deliveries, and how many batches it remembers the sizes
# of (see Ingestor._run).
LINGER_SECONDS = 0.001
REMEMBERED_BATCHES = 8


@dataclass(slots=True)
class Delivery:
    event: InboundEvent
    connection: ConnectionView
    payload: str
    # `webhook`, or `catch_up` for an event listed from Stripe's Events API.
    source: str = "webhook"
    received_at: datetime = field(default_factory=utcnow)
    answer: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def key(self) -> repository.EventKey:
        return (self.event.connection_id, self.event.stripe_event_id)

    def row(self, outcome: Outcome) -> dict[str, Any]:
        final = outcome.status != "queued"
        return {
            "id": self.event.id,
            "tenant_id": self.connection.tenant_id,
            "environment_id": self.connection.environment_id,
            "connection_id": self.event.connection_id,
            "stripe_event_id": self.event.stripe_event_id,
            "type": self.event.type,
            "stripe_object_id": self.event.stripe_object_id,
            "stripe_created": self.event.created,
            "livemode": bool(self.event.livemode),  # stored as false when the event does not say
            "payload": self.payload,
            "status": outcome.status,
            "attempts": 1 if final else 0,
            "last_error": None,
            "note": outcome.note,
            "customer_id": outcome.customer_id,
            "next_attempt_at": None if final else self.received_at + stored.RECOVERY_DELAY,
            "received_at": self.received_at,
            "processed_at": utcnow() if final else None,
            "source": self.source,
        }


class _StoredAlready(Exception):
    """Some of the batch's events turned out to be stored already: redo the batch without them."""


class Ingestor:
    def __init__(
        self,
        db: AppContext,
        on_queued: Callable[[Sequence[str]], None],
        max_batch: int = MAX_BATCH,
        committers: int | None = None,
    ) -> None:
        self._db = db
        self._on_queued = on_queued
        self._max_batch = max_batch
        if committers is None:
            committers = SQLITE_COMMITTERS if db.engine.dialect.name == "sqlite" else COMMITTERS
        self._committers = committers
        self._queue: asyncio.Queue[Delivery | None] = asyncio.Queue()
        self._queued = asyncio.Event()
        self._recent_sizes: deque[int] = deque(maxlen=REMEMBERED_BATCHES)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"flexsync-webhook-ingest-{n}") for n in range(self._committers)
        ]

    async def stop(self) -> None:
        """Commit what is queued, then end the committers."""
        if not self._tasks:
            return
        for _ in self._tasks:
            self._put(None)
        _done, pending = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_SECONDS)
        if pending:
            log.warning("webhook ingest did not finish in time; unanswered deliveries will be redelivered")
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._tasks = []

    async def submit(self, delivery: Delivery) -> str:
        """Wait until the delivery is durably stored; returns its status for the response."""
        self._put(delivery)
        return await delivery.answer

    def _put(self, item: Delivery | None) -> None:
        self._queue.put_nowait(item)
        self._queued.set()

    async def _run(self) -> None:
        """Commit batches until stopped.

        A batch about to start waits, LINGER_SECONDS at most, until it is as large as the largest of the last
        few: right after a commit answers its batch, those clients send their next deliveries within a
        millisecond or two, and without the wait the first of them would be committed alone (or, with
        steady load, the clients would settle into two half-size waves). When the load drops, the wait
        lasts a few batches, until the smaller batches are all that is remembered.
        """
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            target = min(self._max_batch, max(self._recent_sizes, default=1))
            deadline = asyncio.get_running_loop().time() + LINGER_SECONDS
            while True:
                while len(batch) < self._max_batch and not self._queue.empty():
                    item = self._queue.get_nowait()
                    if item is None:
                        await self._commit(batch)
                        return
                    batch.append(item)
                if len(batch) >= target or not await self._next_delivery(deadline):
                    break
            self._recent_sizes.append(len(batch))
            await self._commit(batch)

    async def _next_delivery(self, deadline: float) -> bool:
        """Wait for another delivery; False if none comes before the deadline."""
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        self._queued.clear()
        if not self._queue.empty():
            return True
        try:
            async with asyncio.timeout(remaining):
                await self._queued.wait()
        except TimeoutError:
            # A loop that was held up may see the deadline pass and the deliveries come at the same time.
            return not self._queue.empty()
        return True

    async def _commit(self, batch: list[Delivery]) -> None:
        WEBHOOK_BATCH.observe(len(batch))
        originals: dict[repository.EventKey, Delivery] = {}
        repeats: list[Delivery] = []
        for delivery in batch:
            if delivery.key in originals:
                repeats.append(delivery)
            else:
                originals[delivery.key] = delivery
        fresh = list(originals.values())
        try:
            results = await self._store_and_apply(fresh)
        except Exception as exc:
            log.warning("applying webhook events failed; storing them to apply later", error=describe_error(exc))
            results = await self._store_only(fresh)
        for delivery in fresh:
            _answer(delivery, results[delivery.event.id])
        for delivery in repeats:
            original = results[originals[delivery.key].event.id]
            _answer(delivery, original if isinstance(original, BaseException) else "duplicate")

    async def _store_and_apply(self, fresh: Sequence[Delivery]) -> dict[str, str | BaseException]:
        statuses, queued = await store_and_apply(self._db.hot_transaction, fresh)
        self._hand_over(queued)
        results: dict[str, str | BaseException] = dict(statuses)
        return results

    async def _store_only(self, fresh: Sequence[Delivery]) -> dict[str, str | BaseException]:
        """Store without applying, all together, else one by one so a bad row fails alone."""
        queued = Outcome("queued", "stored; applying failed at first and is retried")
        groups = [list(fresh)] if len(fresh) == 1 else [list(fresh), *([d] for d in fresh)]
        results: dict[str, str | BaseException] = {}
        for group in groups:
            pending = [d for d in group if d.event.id not in results]
            if not pending:
                continue
            try:
                async with self._db.transaction() as session:
                    inserted = await repository.insert_events(session, [d.row(queued) for d in pending])
            except Exception as exc:
                if len(pending) == 1:
                    log.error("storing a webhook event failed", error=describe_error(exc))
                    results[pending[0].event.id] = exc
                continue
            results.update({d.event.id: "queued" if d.event.id in inserted else "duplicate" for d in pending})
            self._hand_over([d.event.id for d in pending if d.event.id in inserted])
        return results

    def _hand_over(self, queued_ids: list[str]) -> None:
        if queued_ids:
            self._on_queued(queued_ids)


Transaction = Callable[[], AbstractAsyncContextManager[AsyncSession]]
# More work for the transaction that stores a batch (catch-up moves its cursor with the events it stores).
AlsoInTransaction = Callable[[AsyncSession], Awaitable[None]]


async def store_and_apply(
    transaction: Transaction, fresh: Sequence[Delivery], also: AlsoInTransaction | None = None
) -> tuple[dict[str, str], list[str]]:
    """Apply and insert events in one transaction; returns each event's status (`duplicate` for those stored
    already) and the ids of those stored `queued`, for the caller to apply next. `also` runs in the same
    transaction, even when every event was stored already.

    Optimistic: a redelivery is rare, so it is not looked for up front. An event the insert finds stored already
    (a duplicate, or another process was faster) rolls the batch back, and the batch is redone without it.
    Every redo leaves out at least one more event, so the rounds end; more than one happens only when other
    processes store copies of the batch's events meanwhile (a fixed limit of three once sent a batch's new
    events to the retry sweep when Stripe's copies of them raced across two server processes)."""
    stored: set[repository.EventKey] = set()
    while True:
        new = [d for d in fresh if d.key not in stored]
        outcomes: list[Outcome] = []
        if new or also is not None:
            try:
                async with transaction() as session:
                    if new:
                        events = [d.event for d in new]
                        views = {d.connection.id: d.connection for d in new}
                        inserts = Inserts()
                        outcomes = await inbound.apply_batch(session, events, connections=views, inserts=inserts)
                        repository.add_events(inserts, [d.row(o) for d, o in zip(new, outcomes, strict=True)])
                        inserted = set(await inserts.write(session))
                        if len(inserted) < len(new):
                            stored |= {d.key for d in new if d.event.id not in inserted}
                            raise _StoredAlready
                    if also is not None:
                        await also(session)
            except _StoredAlready:
                continue
        results = {d.event.id: "duplicate" for d in fresh if d.key in stored}
        results.update({d.event.id: o.status for d, o in zip(new, outcomes, strict=True)})
        return results, [d.event.id for d, o in zip(new, outcomes, strict=True) if o.status == "queued"]


def _answer(delivery: Delivery, result: str | BaseException) -> None:
    if delivery.answer.done():  # the client went away
        return
    if isinstance(result, BaseException):
        WEBHOOK_EVENTS.labels("store_failed").inc()
        STRIPE_EVENTS.labels(delivery.source, "store_failed").inc()
        delivery.answer.set_exception(result)
    else:
        WEBHOOK_EVENTS.labels(result).inc()
        STRIPE_EVENTS.labels(delivery.source, result).inc()
        delivery.answer.set_result(result)
