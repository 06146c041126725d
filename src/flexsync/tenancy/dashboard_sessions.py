"""Dashboard sessions kept in the database, so that the server, not the browser, decides when one ends.

A session is a row naming the API key it was opened with; the browser's cookie holds only its random id (256
bits), the row only that id's SHA-256. It ends when its row is deleted (Sign out, Sign out everywhere), when its
key is revoked, after `FLEXSYNC_DASHBOARD_IDLE_MINUTES` without a page view, and 12 hours after sign-in whatever
happens. Every process reads the same rows: `serve --processes N` and several machines agree at once.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import delete, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.config import Settings
from flexsync.models import ApiKey, DashboardSession, Environment, Tenant, max_length
from flexsync.tenancy.service import Scope

# A session ends this long after sign-in, however active it is.
SESSION_LIFETIME = timedelta(hours=12)
# How stale `last_seen_at` may get before a page view writes it: a session's page views cost one write a minute
# at most, not one each, and idle expiry is exact to this much.
LAST_SEEN_EVERY = timedelta(minutes=1)
CLIENT_LENGTH = max_length(DashboardSession.client)

# Well-known User-Agent tokens, most specific first (Edge's also names Chrome and Safari, Chrome's names Safari).
_BROWSERS = (
    ("Edg/", "Edge"),
    ("OPR/", "Opera"),
    ("Firefox/", "Firefox"),
    ("HeadlessChrome/", "Headless Chrome"),
    ("Chromium/", "Chromium"),
    ("Chrome/", "Chrome"),
    ("Safari/", "Safari"),
)
_SYSTEMS = (
    ("Windows", "Windows"),
    ("Android", "Android"),
    ("iPhone", "iOS"),
    ("iPad", "iOS"),
    ("Mac OS X", "macOS"),
    ("CrOS", "ChromeOS"),
    ("Linux", "Linux"),
)


@dataclass(frozen=True, slots=True)
class SignedIn:
    """An open session: its key's scope bounds every page; the names are the ones the page header shows."""

    scope: Scope
    key_prefix: str
    tenant_name: str
    environment_name: str
    last_seen_at: datetime


@dataclass(frozen=True, slots=True)
class Ended:
    """A session whose row is still there but opens nothing: expired (idle, or past 12 hours), or its key
    revoked. The row waits for the workers' hourly sweep (`prune`)."""

    reason: Literal["session-expired", "key-revoked"]


def idle_limit(settings: Settings) -> timedelta:
    """How long a session may go without a page view (`FLEXSYNC_DASHBOARD_IDLE_MINUTES`)."""
    return timedelta(minutes=settings.dashboard_idle_minutes)


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def stored_id(session_id: str) -> str:
    """What the table keeps of a session id: a database copy must not be a set of working cookies."""
    return hashlib.sha256(session_id.encode()).hexdigest()


def describe_client(user_agent: str, address: str | None) -> str:
    """A short description of where a session was opened, such as `Firefox on Linux, 203.0.113.7`."""
    browser = next((name for token, name in _BROWSERS if token in user_agent), None)
    system = next((name for token, name in _SYSTEMS if token in user_agent), None)
    if browser:
        client = f"{browser} on {system}" if system else browser
    else:
        client = user_agent.strip()[:80] or "unknown client"
    return (f"{client}, {address}" if address else client)[:CLIENT_LENGTH]


async def start(
    session: AsyncSession, api_key_id: str, client: str, now: datetime, *, replacing: str | None = None
) -> str:
    """A new session of the key, opened now; its id, for the cookie. The browser's previous session, if it had
    one (`replacing`), ends: a sign-in never keeps an id the browser had before."""
    if replacing is not None:
        await end(session, replacing)
    session_id = new_session_id()
    session.add(
        DashboardSession(
            id=stored_id(session_id),
            api_key_id=api_key_id,
            client=client[:CLIENT_LENGTH],
            created_at=now,
            last_seen_at=now,
            expires_at=now + SESSION_LIFETIME,
        )
    )
    await session.flush()
    return session_id


async def find(session: AsyncSession, session_id: str, now: datetime, idle: timedelta) -> SignedIn | Ended | None:
    """The session and its key in one statement (a primary-key lookup joined to the key, tenant and
    environment, as the key alone was looked up before); None when there is no such session."""
    row = (
        await session.execute(
            select(
                DashboardSession.last_seen_at,
                DashboardSession.expires_at,
                ApiKey.id,
                ApiKey.tenant_id,
                ApiKey.environment_id,
                ApiKey.display_prefix,
                ApiKey.revoked_at,
                Tenant.name,
                Environment.name,
            )
            .join(ApiKey, ApiKey.id == DashboardSession.api_key_id)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .join(Environment, Environment.id == ApiKey.environment_id)
            .where(DashboardSession.id == stored_id(session_id))
        )
    ).first()
    if row is None:
        return None
    last_seen_at, expires_at, key_id, tenant_id, environment_id, prefix, revoked_at, tenant, environment = row
    if revoked_at is not None:
        return Ended("key-revoked")
    if now >= expires_at or now - last_seen_at >= idle:
        return Ended("session-expired")
    return SignedIn(Scope(tenant_id, environment_id, key_id), prefix, tenant, environment, last_seen_at)


def needs_touch(found: SignedIn, now: datetime) -> bool:
    return now - found.last_seen_at >= LAST_SEEN_EVERY


async def touch(session: AsyncSession, session_id: str, now: datetime) -> None:
    await session.execute(
        update(DashboardSession).where(DashboardSession.id == stored_id(session_id)).values(last_seen_at=now)
    )


async def end(session: AsyncSession, session_id: str) -> None:
    """Sign out: the session opens nothing from now on, in any process."""
    await session.execute(delete(DashboardSession).where(DashboardSession.id == stored_id(session_id)))


async def end_all(session: AsyncSession, api_key_id: str) -> int:
    """Sign out everywhere: every session of the key ends; how many there were."""
    result = await session.execute(delete(DashboardSession).where(DashboardSession.api_key_id == api_key_id))
    return cast(CursorResult[Any], result).rowcount


async def prune(session: AsyncSession, idle: timedelta, now: datetime) -> int:
    """Delete the sessions that can no longer open anything (expired, idle, or of a revoked key); how many.

    The table holds a row per signed-in browser of the last 12 hours, so a scan an hour is cheap and no index
    on the times is kept for it."""
    revoked = select(ApiKey.id).where(ApiKey.revoked_at.is_not(None))
    result = await session.execute(
        delete(DashboardSession).where(
            or_(
                DashboardSession.expires_at <= now,
                DashboardSession.last_seen_at <= now - idle,
                DashboardSession.api_key_id.in_(revoked),
            )
        )
    )
    return cast(CursorResult[Any], result).rowcount
