"""The one Stripe client factory: the official SDK, async over httpx, pointed at FLEXSYNC_STRIPE_API_BASE.

Retries are not left to the SDK: the outbound worker retries with its own backoff and idempotency keys.
"""

from __future__ import annotations

import stripe

from flexsync.config import Settings


def stripe_client(secret_key: str, settings: Settings) -> stripe.StripeClient:
    return stripe.StripeClient(
        secret_key,
        base_addresses={"api": settings.stripe_api_base},
        http_client=stripe.HTTPXClient(timeout=settings.stripe_timeout_seconds),
        max_network_retries=0,
    )
