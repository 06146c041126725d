"""The app's wiring: which domain (or the dashboard) runs which jobs and sweeps in the worker. The top of the
house (api, cli) asks for the registry here, so the worker itself imports no domain."""

from __future__ import annotations

from flexsync.jobs.registry import Registry
from flexsync.reconcile import runner
from flexsync.sync import push_jobs
from flexsync.web import sweeps as dashboard_sweeps
from flexsync.webhooks import sweeps


def job_registry() -> Registry:
    registry = Registry()
    push_jobs.register(registry)
    runner.register(registry)
    sweeps.register(registry)
    dashboard_sweeps.register(registry)
    return registry
