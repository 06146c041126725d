"""The ASGI middleware that gives every write request (POST, PUT, DELETE) its RequestWrite, takes the API's
`Idempotency-Key` header, and sends an answer only once the write and its record have committed."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flexsync.idempotency import writes
from flexsync.kit.error_responses import error_response

WRITE_METHODS = frozenset({"POST", "PUT", "DELETE"})
API_PREFIX = "/v1/"
# Stripe's deliveries are idempotent by event id; they carry no key.
STRIPE_WEBHOOK_PREFIX = "/v1/webhooks/stripe/"
_HEADER = writes.HEADER.lower().encode()


class IdempotentWrites:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] not in WRITE_METHODS or path.startswith(STRIPE_WEBHOOK_PREFIX):
            await self.app(scope, receive, send)
            return
        db = scope["app"].state.db
        write = writes.RequestWrite(db.sessions, db.engine.dialect.name == "postgresql")
        key = next((value for name, value in scope["headers"] if name == _HEADER), None)
        if key is not None and path.startswith(API_PREFIX):
            text = key.decode("latin-1").strip()
            if not 0 < len(text) <= writes.MAX_KEY_LENGTH:
                problem = f"must be 1 to {writes.MAX_KEY_LENGTH} characters long"
                response = error_response(
                    400, "validation_error", f"{writes.HEADER}: {problem}", {"fields": {writes.HEADER: problem}}
                )
                await response(scope, receive, send)
                return
            body, receive = await _read_body(receive)
            write.key = text
            write.fingerprint = writes.fingerprint(scope["method"], path, scope.get("query_string", b""), body)
        token = writes.begin(write)
        try:
            await self.app(scope, receive, _AfterCommit(write, send))
        except writes.Replayed as replayed:
            answer = replayed.answer
            await send({"type": "http.response.start", "status": answer.status_code, "headers": answer.headers})
            await send({"type": "http.response.body", "body": answer.body})
        except writes.OutcomeUnknown:
            message = (
                "the database connection was lost while the write was being committed, and whether it was made "
                f"cannot be learned now: send the request again with the same {writes.HEADER}, which answers the "
                "write's result if it was made, or makes it"
            )
            response = error_response(503, "internal_error", message, headers={"Retry-After": "1"})
            await response(scope, receive, send)
        finally:
            writes.end(token)
            await write.discard()


async def _read_body(receive: Receive) -> tuple[bytes, Receive]:
    """The whole request body (the fingerprint needs it), and a `receive` that gives it to the app again."""
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    given = False

    async def replay() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return body, replay


class _AfterCommit:
    """The app's `send`: an answer to a write not committed yet is held until its record is committed with it."""

    def __init__(self, write: writes.RequestWrite, send: Send) -> None:
        self.write = write
        self.send = send
        self.start: Message | None = None
        self.chunks: list[bytes] = []
        # The app's answer was replaced by the key's recorded one: what remains of it is dropped.
        self.replaced = False

    async def __call__(self, message: Message) -> None:
        if self.replaced:
            return
        if message["type"] == "http.response.start" and self.write.pending is not None:
            self.start = message
            return
        if message["type"] == "http.response.start" and 400 <= message["status"] < 500 and self.write.keyed:
            # Refused before writing anything: a retry whose first attempt did the work meets that work here (a
            # 5xx is not looked up: the database may be what failed, and the client retries it with its key).
            recorded = await self.write.answered_before()
            if recorded is not None:
                self.replaced = True
                await self.send(
                    {"type": "http.response.start", "status": recorded.status_code, "headers": recorded.headers}
                )
                await self.send({"type": "http.response.body", "body": recorded.body})
                return
        if message["type"] != "http.response.body" or self.start is None:
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        held = writes.Answer(self.start["status"], list(self.start.get("headers", [])), b"".join(self.chunks))
        answer = await self.write.record(held)
        if answer is not held:
            self.start = {**self.start, "status": answer.status_code, "headers": answer.headers}
        await self.send(self.start)
        await self.send({"type": "http.response.body", "body": answer.body})
