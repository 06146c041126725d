"""Signing in with an API key and out again."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import RedirectResponse, Response

from flexsync.deps import DB
from flexsync.tenancy.service import resolve_api_key
from flexsync.web.auth import (
    PostedForm,
    checked_form,
    current_session,
    safe_next,
    set_session_cookie,
    signer,
)
from flexsync.web.queries import active_key
from flexsync.web.render import render
from flexsync.web.session import COOKIE_NAME

router = APIRouter()


@router.get("/")
async def home() -> Response:
    return RedirectResponse("/customers", status_code=303)


def _sign_in_page(request: Request, next_path: str, error: str | None = None, status_code: int = 200) -> Response:
    session = current_session(request)
    needs_cookie = session is None or session.signed_in
    if session is None or needs_cookie:
        session = signer(request).new_session()
    response = render(
        request,
        "signin.html",
        None,
        {"next": next_path, "error": error, "csrf_token": signer(request).csrf_token(session)},
        status_code=status_code,
    )
    if needs_cookie:
        set_session_cookie(request, response, session)
    return response


@router.get("/signin")
async def sign_in_form(request: Request, db: DB, next: Annotated[str | None, Query()] = None) -> Response:
    session = current_session(request)
    if session is not None and session.signed_in:
        async with db.read() as db_session:
            if await active_key(db_session, session.api_key_id) is not None:
                return RedirectResponse(safe_next(next), status_code=303)
    return _sign_in_page(request, safe_next(next))


@router.post("/signin")
async def sign_in(request: Request, db: DB) -> Response:
    form = await checked_form(request, current_session(request))
    next_path = safe_next(str(form.get("next") or ""))
    presented = str(form.get("api_key") or "").strip()
    scope = None
    if presented:
        async with db.read() as session:
            scope = await resolve_api_key(session, presented)
    if scope is None:
        message = "Enter an API key." if not presented else "That API key is not valid, or it has been revoked."
        return _sign_in_page(request, next_path, message, status_code=401)
    response = RedirectResponse(next_path, status_code=303)
    set_session_cookie(request, response, signer(request).new_session(scope.api_key_id))
    return response


@router.post("/signout")
async def sign_out(_form: PostedForm) -> Response:
    response = RedirectResponse("/signin?notice=signed-out", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/")
    return response
