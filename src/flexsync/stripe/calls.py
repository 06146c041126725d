"""Every outbound Stripe request goes through `StripeCaller.call`: rate limited per connection across all
processes (stripe/ratelimit.py), timed, counted, and a failure classified as worth retrying (connection errors,
timeouts, 429, 5xx; `Stripe-Should-Retry` wins) or final (other 4xx, with Stripe's message). The caller decides
when to retry, using `stripe_call_backoff`, and must send the same Idempotency-Key each time so a request Stripe
already applied is replayed, never repeated.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import stripe
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from flexsync.config import Settings
from flexsync.logs import redact
from flexsync.metrics import STRIPE_LATENCY, STRIPE_REQUESTS
from flexsync.stripe.client import stripe_client, stripe_http_client
from flexsync.stripe.ratelimit import SharedRateLimit

T = TypeVar("T")

FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 30.0
JITTER = 0.2


def stripe_call_backoff(retry: int, first: float = FIRST_RETRY_SECONDS) -> float:
    """Seconds to wait before retry number `retry` (1 = the first) of a Stripe call, or of a job that failed on
    one: `first` (FLEXSYNC_STRIPE_RETRY_FIRST_SECONDS, 0.5 s) doubling up to 30 s, +-20 % jitter."""
    base: float = min(MAX_RETRY_SECONDS, first * 2 ** max(0, retry - 1))
    return min(MAX_RETRY_SECONDS, base * random.uniform(1 - JITTER, 1 + JITTER))


@dataclass(frozen=True, slots=True)
class StripeAccount:
    """What a call needs to know about a connection (connections.accounts builds it). The key is decrypted,
    held in memory only. `requests_per_second` None: not rate limited (see stripe/ratelimit.py)."""

    connection_id: str | None
    secret_key: str = field(repr=False)
    requests_per_second: float | None


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

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession]):
        """`sessions`: where the shared rate limit books its slots (the app context's unit-of-work sessions)."""
        self._settings = settings
        self._http = stripe_http_client(settings)
        self._clients: dict[str | None, tuple[str, stripe.StripeClient]] = {}
        self._rate_limit = SharedRateLimit(sessions)

    def _client(self, account: StripeAccount) -> stripe.StripeClient:
        cached = self._clients.get(account.connection_id)
        if cached is None or cached[0] != account.secret_key:
            cached = (account.secret_key, stripe_client(account.secret_key, self._settings, self._http))
            if account.connection_id is None:
                return cached[1]
            self._clients[account.connection_id] = cached
        return cached[1]

    async def call(
        self, account: StripeAccount, operation: str, request: Callable[[stripe.StripeClient], Awaitable[T]]
    ) -> T:
        """Make one request (no retry here); raises StripeCallFailed."""
        if account.connection_id is not None and account.requests_per_second is not None:
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

    def backoff(self, retry: int) -> float:
        """`stripe_call_backoff` with the process's FLEXSYNC_STRIPE_RETRY_FIRST_SECONDS."""
        return stripe_call_backoff(retry, self._settings.stripe_retry_first_seconds)

    async def aclose(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> StripeCaller:
        """`async with StripeCaller(...) as caller:` for a caller of one request or command, closed at the end."""
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()
