"""Prometheus metrics, exposed at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter("flexsync_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
WEBHOOK_EVENTS = Counter("flexsync_webhook_events_total", "Stripe webhook deliveries", ["outcome"])
WEBHOOK_BATCH = Histogram(
    "flexsync_webhook_batch_size",
    "Deliveries stored (and applied) together in one transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
SYNC_JOBS = Counter("flexsync_sync_jobs_total", "Outbound sync jobs finished", ["kind", "outcome"])
STRIPE_REQUESTS = Counter("flexsync_stripe_requests_total", "Requests made to Stripe", ["operation", "status"])
STRIPE_LATENCY = Histogram("flexsync_stripe_request_seconds", "Latency of requests to Stripe", ["operation"])
