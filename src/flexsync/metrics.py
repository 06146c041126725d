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
SYNC_JOBS = Counter("flexsync_sync_jobs_total", "Outbound sync jobs finished", ["kind", "outcome"])
STRIPE_REQUESTS = Counter("flexsync_stripe_requests_total", "Requests made to Stripe", ["operation", "status"])
STRIPE_LATENCY = Histogram("flexsync_stripe_request_seconds", "Latency of requests to Stripe", ["operation"])

# PostgreSQL connections taken from the process's pool and not yet returned (summed over the server's live
# processes): against FLEXSYNC_DATABASE_MAX_CONNECTIONS, how close the server runs to its cap.
DB_CONNECTIONS_IN_USE = Gauge(
    "flexsync_db_connections_in_use", "PostgreSQL connections in use from the pool", multiprocess_mode="livesum"
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
