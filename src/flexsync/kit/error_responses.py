"""The answers in the contract's error shape, and the handlers that turn every failure into one."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from flexsync.kit.errors import CODES_BY_STATUS, APIError, ErrorCode, describe_validation_errors, error_body
from flexsync.kit.json import JSONResponse

log = structlog.get_logger(__name__)

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})


def error_response(
    status: int,
    code: ErrorCode,
    message: str,
    details: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(status, code, message, details or {}), status_code=status, headers=headers)


def _allowed_methods(request: Request, starlettes: str) -> str:
    """Every method the request's path takes. Starlette names only those of the first route matching the path,
    where several routes share it (GET and PUT /v1/customers/{id} are two routes); the API's OpenAPI document
    knows them all (paths it leaves out, the dashboard's, keep Starlette's answer)."""
    methods = set(filter(None, (method.strip() for method in starlettes.split(","))))
    app: FastAPI = request.app
    table: list[tuple[re.Pattern[str], set[str]]] | None = getattr(app.state, "allowed_methods", None)
    if table is None:
        table = app.state.allowed_methods = [
            (compile_path(path)[0], {method.upper() for method in operations if method.upper() in HTTP_METHODS})
            for path, operations in app.openapi().get("paths", {}).items()
        ]
    for pattern, path_methods in table:
        if pattern.match(request.url.path):
            methods |= path_methods
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = describe_validation_errors(list(exc.errors()))
        return error_response(400, "validation_error", message, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        fallback: ErrorCode = "internal_error" if exc.status_code >= 500 else "validation_error"
        code = CODES_BY_STATUS.get(exc.status_code, fallback)
        # Starlette's own headers, such as a 405's Allow (which methods the path takes), are part of the answer.
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": _allowed_methods(_request, (headers or {}).get("Allow", ""))}
        return error_response(exc.status_code, code, str(exc.detail), headers=headers)

    # The last resort, should kit.middleware.UnexpectedErrors itself fail: Starlette's server-error handler
    # answers with this, then closes the connection.
    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", path=request.url.path, error_type=type(exc).__name__)
        return error_response(500, "internal_error", "internal error")
