"""The sync worker: claims due jobs under a lease, runs them concurrently, retries with backoff, and runs the
periodic sweeps. What a job of each kind does, and which sweeps there are, the domains register (jobs/registry.py).

Runs inside `flexsync serve` (unless --no-worker) and as `flexsync worker`; any number of workers may share a
PostgreSQL database (SQLite: one). A worker sleeps until woken by a new job (PostgreSQL LISTEN/NOTIFY, or an
in-process commit hook) or until the poll interval passes, whichever is first. While it runs a job it renews
the job's lease; if it dies, the lease runs out and another worker takes the job over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable

import aiosqlite
import asyncpg  # type: ignore[import-untyped]
import structlog
from sqlalchemy.engine import make_url

from flexsync.config import Settings
from flexsync.context import AppContext, open_context
from flexsync.crypto import SecretBox
from flexsync.jobs import outbox, repository
from flexsync.jobs.leases import keep_leases
from flexsync.jobs.registry import Registry, Sweep, WorkerContext
from flexsync.jobs.service import fail, retry_later
from flexsync.metrics import SYNC_JOBS
from flexsync.models import SyncJob, utcnow
from flexsync.stripe.calls import StripeCaller, stripe_call_backoff

log = structlog.get_logger(__name__)

SHUTDOWN_GRACE_SECONDS = 5.0
# Every commit that queues a job wakes every worker. A worker whose last claim found nothing waits this long
# before claiming again, so under a burst one claim takes several jobs instead of each worker running a mostly
# empty claim per commit. An idle worker's last claim is older than this: a new job is claimed at once.
EMPTY_CLAIM_SPACING_SECONDS = 0.02
# How often a worker on SQLite looks whether another process has committed (SQLite has no NOTIFY).
SQLITE_WATCH_SECONDS = 0.05


class Worker:
    def __init__(self, db: AppContext, registry: Registry, *, concurrency: int):
        self.db = db
        self.settings = db.settings
        self.registry = registry
        self.concurrency = concurrency
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._caller = StripeCaller(db.settings, db.sessions)
        # Set once the worker is stopping: loops end, sweeps hand their work back (WorkerContext.stopping).
        self._stopped = asyncio.Event()
        self._context = WorkerContext(db, self._caller, self.id, self._retry_or_fail, self._stopped.is_set)
        sweeps = [sweep for sweep in registry.sweeps if sweep.enabled(self.settings)]
        self._tick_sweeps = [sweep for sweep in sweeps if not sweep.own_task]
        self._task_sweeps = [sweep for sweep in sweeps if sweep.own_task]
        self._sweep_due: dict[str, float] = {}
        self._wakeup = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._sweep_tasks: list[asyncio.Task[None]] = []
        self._listener: asyncpg.Connection | None = None
        self._listener_retry_at = 0.0
        self._stop_local_wake: Callable[[], None] | None = None
        self._last_empty_claim = 0.0

    def wake(self) -> None:
        self._wakeup.set()

    async def start(self) -> None:
        self._stop_local_wake = outbox.on_commit_wake(self.wake)
        await self._ensure_listener()
        self._tasks = [
            asyncio.create_task(self._loop()),
            asyncio.create_task(keep_leases(self.db, self.id, lambda: self._running)),
        ]
        self._sweep_tasks = [asyncio.create_task(self._sweep_loop(sweep)) for sweep in self._task_sweeps]
        if self.db.engine.dialect.name == "sqlite":
            self._tasks.append(asyncio.create_task(self._watch_sqlite_commits()))
        log.info("sync worker started", worker=self.id, concurrency=self.concurrency)

    async def stop(self) -> None:
        """Stop claiming, let running jobs and sweeps finish for a few seconds, then hand the rest back."""
        self._stopped.set()
        if self._stop_local_wake is not None:
            self._stop_local_wake()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Sweeps of their own task end their pass at its next step (WorkerContext.stopping); cancelled only if
        # that takes longer than the grace.
        if self._sweep_tasks:
            _, late = await asyncio.wait(self._sweep_tasks, timeout=SHUTDOWN_GRACE_SECONDS)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._sweep_tasks, return_exceptions=True)
        unfinished = list(self._running.values())
        if unfinished:
            _, pending = await asyncio.wait(unfinished, timeout=SHUTDOWN_GRACE_SECONDS)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if self._running:
                async with self.db.transaction() as session:
                    await repository.release(session, self.id, list(self._running), utcnow())
        if self._listener is not None:
            await self._listener.close()
        await self._caller.aclose()
        log.info("sync worker stopped", worker=self.id)

    async def tick(self) -> int:
        """One pass of the worker: claim the due jobs that fit in its free capacity and start them.

        Returns how many jobs were started. Called whenever the worker wakes (a new job, a finished job, the
        poll interval), so other periodic work of the worker belongs here too.
        """
        await self._run_due_sweeps()
        free = self.concurrency - len(self._running)
        if free <= 0:
            return 0
        async with self.db.transaction() as session:
            jobs = await repository.claim(session, self.id, free, self.settings.job_lease_seconds, utcnow())
        if not jobs:
            self._last_empty_claim = time.monotonic()
        for job in jobs:
            self._running[job.id] = asyncio.create_task(self._run(job))
        return len(jobs)

    async def _run_due_sweeps(self) -> None:
        for sweep in self._tick_sweeps:
            if time.monotonic() < self._sweep_due.get(sweep.name, 0.0):
                continue
            self._sweep_due[sweep.name] = time.monotonic() + sweep.every(self.settings)
            await self._sweep(sweep)

    async def _sweep_loop(self, sweep: Sweep) -> None:
        while not self._stopped.is_set():
            await self._sweep(sweep)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), timeout=sweep.every(self.settings))

    async def _sweep(self, sweep: Sweep) -> None:
        try:
            await sweep.work(self._context)
        except Exception:
            log.exception(sweep.name + " failed", worker=self.id)

    async def _loop(self) -> None:
        while not self._stopped.is_set():
            self._wakeup.clear()
            try:
                await self.tick()
            except Exception:
                log.exception("sync worker tick failed; retrying after the poll interval", worker=self.id)
            await self._ensure_listener()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=self.settings.job_poll_interval)
            spacing = self._last_empty_claim + EMPTY_CLAIM_SPACING_SECONDS - time.monotonic()
            if spacing > 0:
                await asyncio.sleep(spacing)

    async def _watch_sqlite_commits(self) -> None:
        """Wake when another connection commits a write to the SQLite file, so a `flexsync worker` next to
        `serve --no-worker` hears of new jobs within SQLITE_WATCH_SECONDS. `PRAGMA data_version` is a cheap read
        on a connection of its own: it takes no lock and changes only when someone else has committed."""
        path = make_url(self.settings.database_url).database
        if not path or path == ":memory:":
            return
        try:
            async with aiosqlite.connect(path) as watcher:
                seen = None
                while True:
                    async with watcher.execute("PRAGMA data_version") as cursor:
                        row = await cursor.fetchone()
                    if row is not None and seen is not None and row[0] != seen:
                        self.wake()
                    seen = row[0] if row is not None else seen
                    await asyncio.sleep(SQLITE_WATCH_SECONDS)
        except aiosqlite.Error as exc:
            log.warning("cannot watch the SQLite database for commits; polling instead", error=type(exc).__name__)

    async def _ensure_listener(self) -> None:
        """On PostgreSQL, LISTEN on a dedicated connection; reconnect (at most once per poll) if it dropped."""
        if self.db.engine.dialect.name != "postgresql" or self._stopped.is_set():
            return
        if self._listener is not None and not self._listener.is_closed():
            return
        if time.monotonic() < self._listener_retry_at:
            return
        self._listener_retry_at = time.monotonic() + self.settings.job_poll_interval
        dsn = make_url(self.settings.database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            self._listener = await asyncpg.connect(dsn)
            await self._listener.add_listener(outbox.NOTIFY_CHANNEL, lambda *_: self.wake())
        except (OSError, asyncpg.PostgresError) as exc:
            self._listener = None
            log.warning("cannot LISTEN for new jobs; polling instead", error=type(exc).__name__)

    async def _run(self, job: SyncJob) -> None:
        try:
            kind = self.registry.kinds.get(job.kind)
            if kind is None:
                await self._retry_or_fail(job, f"no handler for job kind {job.kind!r}", retryable=False)
            else:
                await kind.handler(self._context, job)
        except Exception as exc:
            log.exception("sync job crashed", job_id=job.id, kind=job.kind, worker=self.id)
            await self._retry_or_fail(job, f"internal error ({type(exc).__name__})", retryable=True)
        finally:
            self._running.pop(job.id, None)
            self.wake()

    async def _retry_or_fail(self, job: SyncJob, message: str, retryable: bool) -> None:
        now = utcnow()
        async with self.db.transaction() as session:
            held = await repository.get_held(session, job.id, self.id)
            if held is None:
                return
            if retryable and held.attempts < held.max_attempts:
                delay = stripe_call_backoff(held.attempts, self.settings.stripe_retry_first_seconds)
                retry_later(held, message, delay, now)
                asyncio.get_running_loop().call_later(delay, self.wake)
                outcome = "retried"
            else:
                fail(held, message, now)
                outcome = "failed"
            kind = self.registry.kinds.get(held.kind)
            if kind is not None and kind.note_failure is not None:
                await kind.note_failure(session, held, message)
        SYNC_JOBS.labels(job.kind, outcome).inc()
        log.warning("sync job " + outcome, job_id=job.id, kind=job.kind, attempts=job.attempts, error=message)


async def run_worker(settings: Settings, registry: Registry, concurrency: int, box: SecretBox) -> None:
    """`flexsync worker`: run until SIGINT or SIGTERM, then shut down gracefully."""
    # A connection per job at most, and a few for the polling, the sweeps and pruning.
    connections = min(settings.database_max_connections, 2 * (concurrency + 2))
    db = open_context(settings, max_connections=connections, box=box)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    worker = Worker(db, registry, concurrency=concurrency)
    try:
        await worker.start()
        await stop.wait()
        await worker.stop()
    finally:
        await db.close()
