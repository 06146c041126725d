"""Who is looking at the dashboard: the session behind the cookie, the API key behind it, the CSRF check on forms."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated
from urllib.parse import quote

import structlog
from fastapi import Depends, Request
from starlette.datastructures import FormData
from starlette.responses import Response

from flexsync.context import AppContext
from flexsync.crypto import configured_keys
from flexsync.db import temporary_failure
from flexsync.deps import DB
from flexsync.idempotency import writes
from flexsync.models import utcnow
from flexsync.sync import health as delivery_health
from flexsync.tenancy import dashboard_sessions
from flexsync.tenancy.service import Scope
from flexsync.web.session import COOKIE_MAX_AGE_SECONDS, COOKIE_NAME, SessionSigner, signing_secrets

log = structlog.get_logger(__name__)

CSRF_FIELD = "csrf_token"


class SignInRequired(Exception):
    """The page needs a signed-in session; answered with a redirect to the sign-in page."""

    def __init__(self, next_path: str, notice: str | None = None):
        super().__init__("sign-in required")
        self.next_path = next_path
        self.notice = notice

    def location(self) -> str:
        location = f"/signin?next={quote(self.next_path, safe='/')}"
        return f"{location}&notice={self.notice}" if self.notice else location


class CSRFRejected(Exception):
    """A form arrived without this session's CSRF token; answered 403."""


def signer(request: Request) -> SessionSigner:
    """Built once per process from the encryption keys, the first time a page needs it."""
    state = request.app.state
    existing: SessionSigner | None = getattr(state, "dashboard_signer", None)
    if existing is None:
        db: AppContext = state.db
        existing = SessionSigner(signing_secrets(configured_keys(db.settings)))
        state.dashboard_signer = existing
    return existing


def cookie_session_id(request: Request) -> str | None:
    """The session id the browser's cookie holds, once its signature checks; whether it is signed in is the
    database's to say (`find_session`)."""
    return signer(request).loads(request.cookies.get(COOKIE_NAME))


def set_session_cookie(request: Request, response: Response, session_id: str) -> None:
    response.set_cookie(
        COOKIE_NAME,
        signer(request).dumps(session_id),
        max_age=COOKIE_MAX_AGE_SECONDS,
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )


def safe_next(path: str | None) -> str:
    """Only a path on this site: never `//host` or a full URL (no open redirect through sign-in)."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/customers"
    return path


async def find_session(
    db: AppContext, session_id: str, now: datetime
) -> dashboard_sessions.SignedIn | dashboard_sessions.Ended | None:
    async with db.read() as session:
        return await dashboard_sessions.find(session, session_id, now, dashboard_sessions.idle_limit(db.settings))


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in session: its API key's scope bounds every page."""

    key: dashboard_sessions.SignedIn
    session_id: str
    csrf_token: str
    # What is wrong with the delivery of Stripe's events (sync/health.py): the banner on every page.
    problems: tuple[str, ...] = ()

    @property
    def scope(self) -> Scope:
        return self.key.scope


async def _note_activity(db: AppContext, session_id: str, found: dashboard_sessions.SignedIn, now: datetime) -> None:
    """Move the session's idle deadline on, at most once a minute (LAST_SEEN_EVERY). A database too busy for
    the write just now leaves the page be: the next view writes it."""
    if not dashboard_sessions.needs_touch(found, now):
        return
    try:
        async with db.transaction() as session:
            await dashboard_sessions.touch(session, session_id, now)
    except Exception as exc:
        if temporary_failure(exc) is None:
            raise
        log.warning("could not note dashboard activity; the next page view will", error=type(exc).__name__)


async def require_viewer(request: Request, db: DB) -> Viewer:
    session_id = cookie_session_id(request)
    next_path = request.url.path if request.method == "GET" else "/customers"
    if request.method == "GET" and request.url.query:
        next_path += f"?{request.url.query}"
    if session_id is None:
        raise SignInRequired(next_path)
    now = utcnow()
    found = await find_session(db, session_id, now)
    if found is None:
        raise SignInRequired(next_path)
    if not isinstance(found, dashboard_sessions.SignedIn):
        raise SignInRequired(next_path, notice=found.reason)
    await _note_activity(db, session_id, found, now)
    writes.note_environment(found.scope.environment_id)
    async with db.read() as db_session:
        interval = db.settings.stripe_catchup_interval_seconds
        problems = await delivery_health.problems(db_session, found.scope.environment_id, interval)
    csrf_token = signer(request).csrf_token(session_id)
    return Viewer(key=found, session_id=session_id, csrf_token=csrf_token, problems=tuple(problems))


async def viewer_if_signed_in(request: Request) -> Viewer | None:
    """For pages any visitor may see (errors): the signed-in viewer, if there is one, to show the navigation."""
    session_id = cookie_session_id(request)
    if session_id is None:
        return None
    found = await find_session(request.app.state.db, session_id, utcnow())
    if not isinstance(found, dashboard_sessions.SignedIn):
        return None
    return Viewer(key=found, session_id=session_id, csrf_token=signer(request).csrf_token(session_id))


SignedIn = Annotated[Viewer, Depends(require_viewer)]


async def checked_form(request: Request, session_id: str | None) -> FormData:
    """The posted form, once its CSRF token matches the session's."""
    form = await request.form()
    token = form.get(CSRF_FIELD)
    if session_id is None or not isinstance(token, str) or not signer(request).csrf_valid(session_id, token):
        raise CSRFRejected()
    return form


async def viewer_form(request: Request, viewer: SignedIn) -> FormData:
    """The signed-in viewer's posted form; its key (a hidden field of every form) makes it one write however
    often it is sent."""
    body = await request.body()
    form = await checked_form(request, viewer.session_id)
    key = form.get(writes.FORM_FIELD)
    if isinstance(key, str):
        writes.use_form_key(key, request.method, request.url.path, body)
    return form


PostedForm = Annotated[FormData, Depends(viewer_form)]
