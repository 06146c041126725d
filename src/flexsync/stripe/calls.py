"""Every outbound Stripe request goes through `StripeCaller.call`: rate limited per connection across all
processes (stripe/ratelimit.py), timed, counted, and a failure classified as worth retrying (connection errors,
timeouts, 429, 5xx; `Stripe-Should-Retry` wins) or final (other 4xx, with Stripe's message). The caller decides
when to retry, using `retry_delay`, and must send the same Idempotency-Key each time so a request Stripe
already applied is replayed, never repeated.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import stripe

from flexsync.config import Settings
from flexsync.connections.secrets import secret_key
from flexsync.connections.settings import effective_settings
from flexsync.crypto import SecretBox
from flexsync.deps import Database
from flexsync.logs import redact
from flexsync.metrics import STRIPE_LATENCY, STRIPE_REQUESTS
from flexsync.models import StripeConnection
from flexsync.stripe.client import stripe_client, stripe_http_client
from flexsync.stripe.ratelimit import SharedRateLimit

T = TypeVar("T")

FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 30.0
JITTER = 0.2


def retry_delay(retry: int) -> float:
    """Seconds to wait before retry number `retry` (1 = the first): 0.5 s doubling up to 30 s, +-20 % jitter."""
    base: float = min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** max(0, retry - 1))
    return min(MAX_RETRY_SECONDS, base * random.uniform(1 - JITTER, 1 + JITTER))


@dataclass(frozen=True, slots=True)
class StripeAccount:
    """What a call needs to know about a connection. The key is decrypted, held in memory only."""

    connection_id: str
    secret_key: str = field(repr=False)
    requests_per_second: float

    @classmethod
    def of(cls, connection: StripeConnection, box: SecretBox, settings: Settings) -> StripeAccount:
        """The connection's account, at its `rate_limit` setting or else Stripe's default for the key's mode."""
        rate = effective_settings(connection.settings).rate_limit
        if rate is None:
            rate = settings.stripe_rate_limit_live if connection.mode == "live" else settings.stripe_rate_limit_test
        return cls(connection.id, secret_key(box, connection), rate)


class StripeCallFailed(Exception):
    """A Stripe request that did not succeed. `message` is safe to show and store: it never holds a secret."""

    def __init__(self, message: str, *, http_status: int | None, retryable: bool):
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.retryable = retryable


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return value.strip().lower()
    return None


def classify(exc: stripe.StripeError) -> StripeCallFailed:
    status = exc.http_status
    if isinstance(exc, stripe.APIConnectionError) or status is None:
        return StripeCallFailed(
            "could not reach Stripe (connection error or timeout)", http_status=None, retryable=True
        )
    should_retry = _header(exc.headers, "stripe-should-retry")
    # Stripe's own advice wins; without it, rate limits and server errors are worth another try.
    retryable = should_retry == "true" if should_retry in ("true", "false") else status == 429 or status >= 500
    message = redact(exc.user_message or type(exc).__name__)
    return StripeCallFailed(f"Stripe answered {status}: {message}", http_status=status, retryable=retryable)


class StripeCaller:
    """One per process: a shared HTTP connection pool, a client per connection, the shared rate limit."""

    def __init__(self, db: Database):
        self._settings = db.settings
        self._http = stripe_http_client(db.settings)
        self._clients: dict[str, tuple[str, stripe.StripeClient]] = {}
        self._rate_limit = SharedRateLimit(db)

    def _client(self, account: StripeAccount) -> stripe.StripeClient:
        cached = self._clients.get(account.connection_id)
        if cached is None or cached[0] != account.secret_key:
            cached = (account.secret_key, stripe_client(account.secret_key, self._settings, self._http))
            self._clients[account.connection_id] = cached
        return cached[1]

    async def call(
        self, account: StripeAccount, operation: str, request: Callable[[stripe.StripeClient], Awaitable[T]]
    ) -> T:
        """Make one request (no retry here); raises StripeCallFailed."""
        await self._rate_limit.acquire(account.connection_id, account.requests_per_second)
        outcome = "network"
        started = time.perf_counter()
        try:
            result = await request(self._client(account))
            outcome = "ok"
            return result
        except stripe.StripeError as exc:
            outcome = str(exc.http_status) if exc.http_status else "network"
            raise classify(exc) from exc
        finally:
            STRIPE_REQUESTS.labels(operation, outcome).inc()
            STRIPE_LATENCY.labels(operation).observe(time.perf_counter() - started)

    async def aclose(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]
