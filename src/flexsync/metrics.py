"""Prometheus metrics, exposed at /metrics.

Under `serve --processes N` every process writes its counts to files in a directory of the server's own
(PROMETHEUS_MULTIPROC_DIR, set before the processes start) and /metrics adds them up, so a scrape shows the
whole server whichever process answers it.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

WEBHOOK_EVENTS = Counter("flexsync_webhook_events_total", "Stripe webhook deliveries", ["outcome"])
WEBHOOK_BATCH = Histogram(
    "flexsync_webhook_batch_size",
    "Deliveries stored (and applied) together in one transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
# Stripe events by how they came (`webhook`, `catch_up`) and what became of them: `applied`, `ignored`, `queued`,
# `duplicate` (stored already) and `store_failed` when stored; `failed` and `dead` when a later attempt fails.
STRIPE_EVENTS = Counter("flexsync_stripe_events_total", "Stripe events received", ["source", "status"])
SYNC_JOBS = Counter("flexsync_sync_jobs_total", "Outbound sync jobs finished", ["kind", "outcome"])
STRIPE_REQUESTS = Counter("flexsync_stripe_requests_total", "Requests made to Stripe", ["operation", "status"])
STRIPE_LATENCY = Histogram("flexsync_stripe_request_seconds", "Latency of requests to Stripe", ["operation"])

# PostgreSQL connections taken from the process's pool and not yet returned (summed over the server's live
# processes): against FLEXSYNC_DATABASE_MAX_CONNECTIONS, how close the server runs to its cap.
DB_CONNECTIONS_IN_USE = Gauge(
    "flexsync_db_connections_in_use", "PostgreSQL connections in use from the pool", multiprocess_mode="livesum"
)


# --- Catch-up from Stripe's Events API (webhooks/catch_up.py) ---------------------------------------------------
CATCH_UP_RUNS = Counter("flexsync_stripe_catch_up_runs_total", "Catch-up runs ended", ["outcome"])
CATCH_UP_RECOVERED = Counter(
    "flexsync_stripe_catch_up_recovered_total",
    "Stripe events that catch-up stored because no webhook had delivered them",
    ["connection_id"],
)
# Read from the database when /metrics is scraped (webhooks/health.py), so they hold wherever the workers run.
CATCH_UP_LAG = Gauge(
    "flexsync_stripe_catch_up_lag_seconds",
    "How far behind now each active connection's catch-up cursor is",
    ["connection_id"],
    multiprocess_mode="mostrecent",
)
CATCH_UP_FAILING = Gauge(
    "flexsync_stripe_catch_up_failing",
    "1 while the connection's last catch-up run failed",
    ["connection_id"],
    multiprocess_mode="mostrecent",
)
CATCH_UP_GAP = Gauge(
    "flexsync_stripe_catch_up_gap",
    "1 while the connection's catch-up found a stretch older than Stripe's 30 days of events not yet reconciled",
    ["connection_id"],
    multiprocess_mode="mostrecent",
)
STRIPE_EVENTS_FAILING = Gauge(
    "flexsync_stripe_events_failing",
    "Stored Stripe events whose applying failed and is being retried",
    multiprocess_mode="mostrecent",
)
SYNC_JOBS_FAILED = Gauge(
    "flexsync_sync_jobs_failed", "Sync jobs failed for good and not retried", multiprocess_mode="mostrecent"
)


def exposition() -> bytes:
    """The metrics in Prometheus' text format: this process's, or all of the server's processes'."""
    if os.environ.get(MULTIPROCESS_DIR_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()


# Managed Stripe webhook endpoints (connections/managed_endpoint.py): 1 while Stripe reports the connection's
# endpoint enabled, 0 when it is disabled or gone. Set from the database when /metrics is read.
WEBHOOK_ENDPOINT_ENABLED = Gauge(
    "flexsync_stripe_webhook_endpoint_enabled",
    "1 while the connection's managed Stripe webhook endpoint is enabled, 0 when Stripe disabled it or it is gone",
    ["connection_id"],
    multiprocess_mode="livemostrecent",
)
