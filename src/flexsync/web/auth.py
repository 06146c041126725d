"""Who is looking at the dashboard: the signed session, the API key behind it, and the CSRF check on forms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request
from starlette.datastructures import FormData
from starlette.responses import Response

from flexsync.context import AppContext
from flexsync.crypto import configured_keys
from flexsync.deps import DB
from flexsync.tenancy.service import Scope
from flexsync.web import queries
from flexsync.web.session import COOKIE_NAME, SESSION_MAX_AGE_SECONDS, Session, SessionSigner, signing_secrets

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


def current_session(request: Request) -> Session | None:
    return signer(request).loads(request.cookies.get(COOKIE_NAME))


def set_session_cookie(request: Request, response: Response, session: Session) -> None:
    response.set_cookie(
        COOKIE_NAME,
        signer(request).dumps(session),
        max_age=SESSION_MAX_AGE_SECONDS,
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


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in session: its API key's scope bounds every page."""

    key: queries.KeyHolder
    session: Session
    csrf_token: str

    @property
    def scope(self) -> Scope:
        return self.key.scope


async def require_viewer(request: Request, db: DB) -> Viewer:
    session = current_session(request)
    next_path = request.url.path if request.method == "GET" else "/customers"
    if request.method == "GET" and request.url.query:
        next_path += f"?{request.url.query}"
    if session is None or not session.signed_in:
        raise SignInRequired(next_path)
    async with db.read() as db_session:
        key = await queries.active_key(db_session, session.api_key_id)
    if key is None:
        raise SignInRequired(next_path, notice="key-revoked")
    return Viewer(key=key, session=session, csrf_token=signer(request).csrf_token(session))


SignedIn = Annotated[Viewer, Depends(require_viewer)]


async def checked_form(request: Request, session: Session | None) -> FormData:
    """The posted form, once its CSRF token matches the session's."""
    form = await request.form()
    token = form.get(CSRF_FIELD)
    if session is None or not isinstance(token, str) or not signer(request).csrf_valid(session, token):
        raise CSRFRejected()
    return form


async def viewer_form(request: Request, viewer: SignedIn) -> FormData:
    return await checked_form(request, viewer.session)


PostedForm = Annotated[FormData, Depends(viewer_form)]
