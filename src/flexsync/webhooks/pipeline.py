"""The webhook machinery of one serving process, started and stopped with the app.

- `connections`: the cached lookup of each environment's receiving connection and signing secrets;
- `ingestor`: the group committer that stores (and applies) deliveries before they are answered;
- the applier: applies right away the events the ingestor stored as `queued` (they wait for Stripe's current
  state, or applying them with their batch failed), and every few seconds runs the retry sweep
  (`apply_due_events`) for failed events and for queued ones a stopped process left behind, unless the
  embedded worker runs, whose every tick sweeps too (as do `flexsync worker` processes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog

from flexsync.context import AppContext
from flexsync.logs import describe_error
from flexsync.stripe.calls import StripeCaller
from flexsync.webhooks import stored
from flexsync.webhooks.connection_cache import ConnectionCache
from flexsync.webhooks.ingest import Ingestor

log = structlog.get_logger(__name__)

SWEEP_LIMIT = 200
APPLY_BATCH = 200
STOP_TIMEOUT_SECONDS = 10.0


class QueuedEventApplier:
    def __init__(self, db: AppContext) -> None:
        self._db = db
        self._sweep_interval = db.settings.webhook_retry_sweep_seconds
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Events that wait for Stripe's current state are fetched through this one caller: its connections
        # to Stripe stay open from batch to batch.
        self._caller: StripeCaller | None = None

    def enqueue(self, event_ids: Sequence[str]) -> None:
        for event_id in event_ids:
            self._queue.put_nowait(event_id)

    def start(self, *, sweep: bool) -> None:
        self._caller = StripeCaller(self._db.settings, self._db.sessions)
        self._tasks = [asyncio.create_task(self._apply_queued(), name="flexsync-webhook-applier")]
        if sweep:
            self._tasks.append(asyncio.create_task(self._sweep(), name="flexsync-webhook-retry-sweep"))

    async def stop(self) -> None:
        """Finish the batch in hand; whatever is still queued is left to the retry sweep of a later start."""
        self._stopping.set()
        self._queue.put_nowait(None)
        _done, pending = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_SECONDS)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._tasks = []
        if self._caller is not None:
            await self._caller.aclose()
            self._caller = None

    async def _apply_queued(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < APPLY_BATCH and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    self._queue.put_nowait(None)
                    break
                batch.append(item)
            try:
                await stored.apply_queued_events(self._db, batch, caller=self._caller)
            except Exception as exc:  # the sweep retries them; this loop must keep going
                log.warning("applying queued webhook events failed", error=describe_error(exc))

    async def _sweep(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._sweep_interval)
            if self._stopping.is_set():
                return
            try:
                while await stored.apply_due_events(self._db, limit=SWEEP_LIMIT, caller=self._caller) == SWEEP_LIMIT:
                    pass
            except Exception as exc:  # e.g. the database is down: try again next time
                log.warning("webhook retry sweep failed", error=describe_error(exc))


class WebhookPipeline:
    def __init__(self, db: AppContext) -> None:
        self._db = db
        self.connections = ConnectionCache(db)
        self.applier = QueuedEventApplier(db)
        self.ingestor = Ingestor(db, on_queued=self.applier.enqueue)

    def start(self) -> None:
        self.ingestor.start()
        self.applier.start(sweep=not self._db.settings.run_worker)

    async def stop(self) -> None:
        await self.ingestor.stop()
        await self.applier.stop()
