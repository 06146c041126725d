"""The one Stripe client factory: the official SDK, async over httpx, pointed at FLEXSYNC_STRIPE_API_BASE.

Retries are not left to the SDK: the outbound worker retries with its own backoff and idempotency keys.
"""

from __future__ import annotations

import stripe

from flexsync.config import Settings


def stripe_http_client(settings: Settings) -> stripe.HTTPXClient:
    """An async connection pool that the clients of many connections can share: keys travel per request."""
    return stripe.HTTPXClient(timeout=settings.stripe_timeout_seconds)


def stripe_client(
    secret_key: str, settings: Settings, http_client: stripe.HTTPXClient | None = None
) -> stripe.StripeClient:
    return stripe.StripeClient(
        secret_key,
        base_addresses={"api": settings.stripe_api_base},
        http_client=http_client or stripe_http_client(settings),
        max_network_retries=0,
    )
