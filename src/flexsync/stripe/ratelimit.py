"""Stripe's request rate per connection, shared by every process that uses the database.

Each Stripe request first reserves a time slot in the connection's row of `stripe_rate_slots` and waits for
it, however many worker, API and reconcile processes on however many machines send requests for that
connection: together they stay under its rate (Stripe's limit is per account, not per process).

The algorithm is a generic cell rate algorithm: the row holds the time the next request may go
(`next_slot_at`); a reservation takes the later of that time and now, less a small burst allowance, and
moves `next_slot_at` on by 1/rate. So an idle connection lets a short burst (a tenth of a second's worth of
requests, at least one) go at once, and a busy one spaces its requests 1/rate apart. A reservation is one
short transaction (a single statement on PostgreSQL); a process that dies after reserving only wastes its
slot. Not counted: the `verify: true` check of a connection (a person's action, made with a key that may not
be saved yet, before any transaction opens: its StripeAccount has no rate).

PostgreSQL computes the slot with its own clock (`clock_timestamp()`), so machines whose clocks disagree
still share one schedule. SQLite, one machine by nature, uses the local clock inside its write transaction.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from flexsync.db import transaction
from flexsync.models import StripeRateSlot, utcnow

BURST_SECONDS = 0.1

_RESERVE_POSTGRESQL = text(
    """
    INSERT INTO stripe_rate_slots AS slot (connection_id, next_slot_at)
    VALUES (:connection_id, clock_timestamp() - make_interval(secs => :burst) + make_interval(secs => :interval))
    ON CONFLICT (connection_id) DO UPDATE SET next_slot_at =
        GREATEST(slot.next_slot_at, clock_timestamp() - make_interval(secs => :burst))
        + make_interval(secs => :interval)
    RETURNING CAST(EXTRACT(EPOCH FROM slot.next_slot_at - make_interval(secs => :interval) - clock_timestamp())
                   AS double precision)
    """
)


def burst_seconds(rate: float) -> float:
    """How far behind now a reservation may be dated: room for a tenth of a second's requests, at least one."""
    return max(0.0, max(1.0, rate * BURST_SECONDS) - 1) / rate


class SharedRateLimit:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self._sessions = sessions

    async def acquire(self, connection_id: str, rate: float) -> None:
        """Wait until this process may send one request for the connection at `rate` requests per second."""
        async with transaction(self._sessions) as session:
            wait = await self._reserve(session, connection_id, rate)
        if wait > 0:
            await asyncio.sleep(wait)

    async def _reserve(self, session: AsyncSession, connection_id: str, rate: float) -> float:
        """Reserve the connection's next slot; returns the seconds until it comes (negative: it has)."""
        interval, burst = 1.0 / rate, burst_seconds(rate)
        if session.get_bind().dialect.name == "postgresql":
            params = {"connection_id": connection_id, "interval": interval, "burst": burst}
            wait: float = (await session.execute(_RESERVE_POSTGRESQL, params)).scalar_one()
            return wait
        # SQLite: the transaction holds the database's write lock from its start (BEGIN IMMEDIATE).
        now = utcnow()
        earliest = now - timedelta(seconds=burst)
        booked = (
            await session.execute(
                select(StripeRateSlot.next_slot_at).where(StripeRateSlot.connection_id == connection_id)
            )
        ).scalar_one_or_none()
        slot = earliest if booked is None else max(booked, earliest)
        upsert = sqlite.insert(StripeRateSlot).values(
            connection_id=connection_id, next_slot_at=slot + timedelta(seconds=interval)
        )
        await session.execute(
            upsert.on_conflict_do_update(
                index_elements=[StripeRateSlot.connection_id], set_={"next_slot_at": upsert.excluded.next_slot_at}
            )
        )
        return (slot - now).total_seconds()
