"""Mounting the dashboard on the application: its pages, its static files, and HTML for its errors."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from flexsync.web.auth import CSRFRejected, SignInRequired, viewer_if_signed_in
from flexsync.web.pages import activity, customers, integrations, reconciliation, signin
from flexsync.web.render import STATIC_DIR, render

# Everything else is the dashboard; these keep answering the API's JSON errors.
API_PATH_PREFIXES = ("/v1/", "/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json")

Handler = Callable[[Request, Any], Response | Awaitable[Response]]


def is_dashboard_path(path: str) -> bool:
    return not path.startswith(API_PATH_PREFIXES)


async def _redirect_to_sign_in(_request: Request, exc: SignInRequired) -> Response:
    return RedirectResponse(exc.location(), status_code=303)


async def _csrf_rejected(request: Request, _exc: CSRFRejected) -> Response:
    message = "This form has expired or did not come from this dashboard. Reload the page and try again."
    return await _error_page(request, 403, message)


async def _error_page(request: Request, status: int, message: str) -> Response:
    # A signed-in visitor keeps the navigation and Sign out. Not after a server error: the database may be what
    # failed.
    viewer = await viewer_if_signed_in(request) if status < 500 else None
    return render(request, "error.html", viewer, {"status": status, "message": message}, status_code=status)


def _html_for_dashboard(handler: Handler) -> Handler:
    """The API's handler decides status and message; dashboard pages show them as HTML instead of JSON."""

    async def handle(request: Request, exc: Any) -> Response:
        response = handler(request, exc)
        if inspect.isawaitable(response):
            response = await response
        if not is_dashboard_path(request.url.path) or response.media_type != "application/json":
            return response
        message = orjson.loads(bytes(response.body)).get("message", "Something went wrong.")
        return await _error_page(request, response.status_code, message)

    return handle


def install_dashboard(app: FastAPI) -> None:
    """Call after the API's routes and error handlers are in place."""
    for error_type, handler in list(app.exception_handlers.items()):
        app.exception_handlers[error_type] = _html_for_dashboard(handler)
    app.add_exception_handler(SignInRequired, _redirect_to_sign_in)  # type: ignore[arg-type]
    app.add_exception_handler(CSRFRejected, _csrf_rejected)  # type: ignore[arg-type]
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for module in (signin, customers, integrations, activity, reconciliation):
        app.include_router(module.router, include_in_schema=False)
