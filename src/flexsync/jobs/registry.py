"""What the worker runs, registered by the domains that own it: job kinds (a handler each) and periodic sweeps.

The worker imports no domain: the app's wiring (flexsync/wiring.py) builds a Registry from each domain's
`register` and hands it to the worker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.config import Settings
from flexsync.context import AppContext
from flexsync.models import SyncJob
from flexsync.stripe.calls import StripeCaller


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """What a job handler or a sweep gets from the worker that runs it."""

    ctx: AppContext
    caller: StripeCaller
    # The worker's id: the holder of the leases it takes.
    holder: str
    # Retry the job later with backoff (when `retryable` and attempts are left), or fail it: the job's end.
    retry_or_fail: Callable[[SyncJob, str, bool], Awaitable[None]]
    # True once the worker is stopping: a long sweep hands its work back at its next step rather than being
    # cancelled in the middle of a database call.
    stopping: Callable[[], bool] = lambda: False


JobHandler = Callable[[WorkerContext, SyncJob], Awaitable[None]]
# Called in the transaction that retries or fails a job of the kind, to show the error where the kind's users look.
FailureNote = Callable[[AsyncSession, SyncJob, str], Awaitable[None]]
SweepWork = Callable[[WorkerContext], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class JobKind:
    name: str
    handler: JobHandler
    note_failure: FailureNote | None = None


@dataclass(frozen=True, slots=True)
class Sweep:
    """Periodic work of the worker. `own_task`: run in a loop of its own (long work that must not hold up
    claiming jobs), first when the worker starts; else run from the worker's tick when `interval` has passed.
    `interval`: seconds, or the setting that holds them."""

    name: str
    interval: float | Callable[[Settings], float]
    work: SweepWork
    own_task: bool = False
    enabled: Callable[[Settings], bool] = lambda _settings: True

    def every(self, settings: Settings) -> float:
        return self.interval(settings) if callable(self.interval) else self.interval


@dataclass(slots=True)
class Registry:
    kinds: dict[str, JobKind] = field(default_factory=dict)
    sweeps: list[Sweep] = field(default_factory=list)

    def job_kind(self, name: str, handler: JobHandler, *, note_failure: FailureNote | None = None) -> None:
        if name in self.kinds:
            raise ValueError(f"job kind {name!r} is registered twice")
        self.kinds[name] = JobKind(name, handler, note_failure)

    def sweep(self, sweep: Sweep) -> None:
        self.sweeps.append(sweep)
