"""Signing in with an API key, and out again: of this browser, or of every session of the key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import RedirectResponse, Response

from flexsync.deps import DB
from flexsync.models import utcnow
from flexsync.tenancy import dashboard_sessions
from flexsync.tenancy.service import resolve_api_key
from flexsync.web.auth import (
    PostedForm,
    SignedIn,
    checked_form,
    cookie_session_id,
    find_session,
    safe_next,
    set_session_cookie,
    signer,
)
from flexsync.web.render import render
from flexsync.web.session import COOKIE_NAME

router = APIRouter()


@router.get("/")
async def home() -> Response:
    return RedirectResponse("/customers", status_code=303)


def _sign_in_page(
    request: Request,
    next_path: str,
    error: str | None = None,
    status_code: int = 200,
    notice: str | None = None,
) -> Response:
    # A browser without a session id gets one without a row: it ties the form's CSRF token to this browser.
    session_id = cookie_session_id(request)
    needs_cookie = session_id is None
    if session_id is None:
        session_id = dashboard_sessions.new_session_id()
    context = {"next": next_path, "error": error, "csrf_token": signer(request).csrf_token(session_id)}
    if notice is not None:
        context["notice"] = notice
    response = render(request, "signin.html", None, context, status_code=status_code)
    if needs_cookie:
        set_session_cookie(request, response, session_id)
    return response


def _ended_everywhere(ended: str | None) -> str | None:
    """The notice after Sign out everywhere, with the number of sessions it ended (a number, never URL text)."""
    if ended is None or not ended.isdigit() or len(ended) > 9:
        return None
    count = int(ended)
    return f"You are signed out everywhere: {count} session{'' if count == 1 else 's'} of this API key ended."


@router.get("/signin")
async def sign_in_form(
    request: Request,
    db: DB,
    next: Annotated[str | None, Query()] = None,
    ended: Annotated[str | None, Query()] = None,
) -> Response:
    session_id = cookie_session_id(request)
    if session_id is not None:
        found = await find_session(db, session_id, utcnow())
        if isinstance(found, dashboard_sessions.SignedIn):
            return RedirectResponse(safe_next(next), status_code=303)
    return _sign_in_page(request, safe_next(next), notice=_ended_everywhere(ended))


@router.post("/signin")
async def sign_in(request: Request, db: DB) -> Response:
    previous = cookie_session_id(request)
    form = await checked_form(request, previous)
    next_path = safe_next(str(form.get("next") or ""))
    presented = str(form.get("api_key") or "").strip()
    scope = None
    if presented:
        async with db.read() as session:
            scope = await resolve_api_key(session, presented)
    if scope is None:
        message = "Enter an API key." if not presented else "That API key is not valid, or it has been revoked."
        return _sign_in_page(request, next_path, message, status_code=401)
    client = dashboard_sessions.describe_client(
        request.headers.get("user-agent", ""), request.client.host if request.client else None
    )
    async with db.transaction() as session:
        session_id = await dashboard_sessions.start(session, scope.api_key_id, client, utcnow(), replacing=previous)
    response = RedirectResponse(next_path, status_code=303)
    set_session_cookie(request, response, session_id)
    return response


@router.post("/signout")
async def sign_out(viewer: SignedIn, _form: PostedForm, db: DB) -> Response:
    async with db.transaction() as session:
        await dashboard_sessions.end(session, viewer.session_id)
    response = RedirectResponse("/signin?notice=signed-out", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/")
    return response


@router.post("/signout-everywhere")
async def sign_out_everywhere(viewer: SignedIn, _form: PostedForm, db: DB) -> Response:
    async with db.transaction() as session:
        ended = await dashboard_sessions.end_all(session, viewer.scope.api_key_id)
    response = RedirectResponse(f"/signin?ended={ended}", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/")
    return response
