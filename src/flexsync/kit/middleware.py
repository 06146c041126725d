"""ASGI middleware applied to every request: the body size limit, a default JSON content type, no NUL in URLs,
and an answer in the contract's shape for any failure no route answered."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flexsync.kit.error_responses import error_response
from flexsync.kit.text import NUL, NUL_PROBLEM

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 1024 * 1024


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(scope, receive, send)
                return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "payload_too_large", f"request body is larger than {self.max_bytes} bytes")
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


class DefaultJSONContentType:
    """The API speaks only JSON: a body under /v1/ sent without a JSON content type (as `curl -d` does)
    is read as JSON, as FlexPrice does, instead of failing with a confusing type error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH") and scope["path"].startswith("/v1/"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type" or b"json" in v]
            if len(headers) == len(scope["headers"]) and any(k == b"content-type" for k, _ in headers):
                await self.app(scope, receive, send)
                return
            scope = dict(scope, headers=[*headers, (b"content-type", b"application/json")])
        await self.app(scope, receive, send)


class NoNulInURL:
    """A path or query holding a NUL character (%00) names nothing flexsync stores (PostgreSQL's text cannot
    hold one): refused with 400 before it reaches a route, the webhook route included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (NUL in scope["path"] or b"%00" in scope["query_string"]):
            message = "the URL must not contain the NUL character (%00)"
            response = error_response(400, "validation_error", message, {"fields": {"url": NUL_PROBLEM}})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class UnexpectedErrors:
    """An exception no route turned into an answer: logged, and answered in the contract's shape: 503 with
    Retry-After when `temporary` has a message for it (a condition that passes, such as the database being
    away), else 500 `internal error`.

    Starlette's own last-resort handler answers and then raises the exception on to the server, which then
    closes the connection: a client's next request on that keep-alive connection failed with a reset. Here the
    exception ends with the answer, and the connection stays usable. An exception after the answer has begun
    cannot be answered any more: it goes on to the server, as before.
    """

    def __init__(self, app: ASGIApp, temporary: Callable[[BaseException], str | None]) -> None:
        self.app = app
        self.temporary = temporary

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except ClientDisconnect:
            # The client went away before its request was read: there is no one to answer, and nothing went wrong
            # here (a Stripe delivery so cut off is sent again).
            log.info("client went away before its request was read", path=scope["path"])
        except Exception as exc:
            if started:
                raise
            message = self.temporary(exc)
            if message is None:
                log.exception("unhandled error", path=scope["path"], error_type=type(exc).__name__)
                response = error_response(500, "internal_error", "internal error")
            else:
                log.warning("request failed for now", path=scope["path"], reason=message)
                response = error_response(503, "internal_error", message, headers={"Retry-After": "1"})
            await response(scope, receive, send)
