"""A token bucket per Stripe connection, so one process stays under Stripe's request rate for that account."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """`rate` requests per second on average, with a small burst allowance (a tenth of a second's worth).

    Waiters are served in arrival order: the lock is held while a waiter sleeps for its token.
    """

    def __init__(self, rate: float):
        self._lock = asyncio.Lock()
        self._rate = rate
        self._tokens = self.capacity
        self._stamp = time.monotonic()

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def capacity(self) -> float:
        return max(1.0, self._rate / 10)

    def set_rate(self, rate: float) -> None:
        """Follow a changed connection setting without losing the tokens already earned."""
        self._refill()
        self._rate = rate
        self._tokens = min(self._tokens, self.capacity)

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    async def acquire(self) -> None:
        async with self._lock:
            self._refill()
            while self._tokens < 1:
                await asyncio.sleep((1 - self._tokens) / self._rate)
                self._refill()
            self._tokens -= 1
