"""A write request's unit of work and, when the request carries an idempotency key, the key's record.

Without a key a request's transactions are as they always were: each `AppContext.transaction()` commits at its end.
With one, the request's first unit of work (the first `AppContext.transaction()` of the request's own task) is
its write: when it begins, the key is claimed; when its block ends it is not committed yet but kept open until
the answer is known; then the answer (status, headers, body) is inserted beside the write and both commit at
once (`RequestWrite.record`, called by the middleware as the answer goes out). Further units of work of the same
request join that one (as savepoints), so the request writes once. Claiming the key:

- a record with the same request (method, path, query string, body) ends the request with `Replayed`: the
  stored answer is sent again and nothing runs; a record of another request answers 400 `idempotency_error`;
  a record older than KEPT_FOR is forgotten and the request runs as a new one;
- PostgreSQL: the claim takes a transaction-level advisory lock on the key without waiting: when another
  request holds it (the same key, still running), 409 `idempotency_error`. The lock ends with its transaction
  however that ends (commit, rollback, a dropped connection, a killed process), so nothing is left behind that
  could block the key: there is no "in progress" row, the record only exists once its write has committed.
  The lock and the lookup are one statement, so the lookup reads the snapshot taken as the statement began: a
  first request that commits in the instant between that and the lock is not seen. Its record is then found
  when this one fails (its write meeting the first one's, or its own record's insert meeting the first one's
  record, whose key is unique), and answered: a retry never ends in a conflict with its own first attempt;
- SQLite: a unit of work holds the database's one write lock from its start, so a second request with the key
  waits for the first to finish, then finds its record and replays it.

Some requests must let other processes see steps before their write (the managed webhook endpoint: a lease and
the records of what Stripe did commit between Stripe calls): those steps run in units of work of their own
(`AppContext.step`), before the request's write, and begin with `replay_if_recorded` so that a request already
answered is answered again before Stripe is asked anything. Work that must wait until the write has committed
(deleting in Stripe what the write replaced) is handed to `after_commit`.

A keyed request answered 4xx without having written (a check before its write failed: the connection it
would create exists, the connection it would delete is gone) is answered from the key's record when there is one
with its fingerprint: the middleware asks `answered_before`. So a retry whose first attempt did its work is
answered as that attempt was, whatever the handler reads before its write.

The answer of a write whose COMMIT lost its connection is unknown to the server: PostgreSQL may have committed
it. Before answering 503, `record` finds out on a fresh connection: it waits for the key's advisory lock (held
until the lost transaction has truly ended), then looks for the record. Found: the write happened and its own
answer is sent. Not found: nothing was written (503). The database still away: `OutcomeUnknown` (503 telling the
client to retry with the same key, whose record will answer).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

import structlog
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from flexsync.db import is_unavailable, transaction
from flexsync.idempotency import repository
from flexsync.kit.errors import APIError
from flexsync.models import utcnow

log = structlog.get_logger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
# The dashboard's forms carry their key in this hidden field.
FORM_FIELD = "idempotency_key"
MAX_KEY_LENGTH = 255
KEPT_FOR = timedelta(hours=24)
# How long the server waits, after losing the connection at COMMIT, for the lost transaction to end.
OUTCOME_WAIT_SECONDS = 5
# Answer headers that belong to one answer only, not kept in the record.
_NOT_KEPT = frozenset({b"set-cookie", b"date", b"server"})

_LOCK = text("SELECT pg_advisory_xact_lock(:lock)")
_OUTCOME_WAIT = text(f"SET LOCAL lock_timeout = '{OUTCOME_WAIT_SECONDS}s'")


@dataclass(frozen=True, slots=True)
class Answer:
    status_code: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class Replayed(Exception):
    """The request was made before under its key: `answer` is what it answered then."""

    def __init__(self, answer: Answer):
        super().__init__("answered from the idempotency record")
        self.answer = answer


class OutcomeUnknown(Exception):
    """The connection was lost at COMMIT and the database could not be asked whether the commit happened."""


def fingerprint(method: str, path: str, query: bytes, body: bytes) -> str:
    """What makes two requests the same request, as a SHA-256 (hex)."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query, body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def idempotency_error(status: int, message: str) -> APIError:
    return APIError(status, message, code="idempotency_error", details={"fields": {HEADER: message}})


class RequestWrite:
    """One write request (POST, PUT or DELETE), made by the middleware before the request runs."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], postgresql: bool):
        self._sessions = sessions
        self._postgresql = postgresql
        self._task = asyncio.current_task()
        self.key: str | None = None
        self.fingerprint: str | None = None
        self.environment_id: str | None = None
        # The claimed unit of work, uncommitted, once its block has ended: `record` commits it.
        self.pending: AsyncSession | None = None
        # True from the claim until the write has committed or rolled back.
        self.writing = False
        # Work that must wait for the write to commit (`after_commit`), run by `record` once it has.
        self.committed_hooks: list[Callable[[], Awaitable[None]]] = []

    @property
    def keyed(self) -> bool:
        return self.key is not None and self.fingerprint is not None and self.environment_id is not None

    def _lock_id(self) -> int:
        digest = hashlib.sha256(f"{self.environment_id}\0{self.key}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncSession]:
        if self.pending is not None:
            async with self.pending.begin_nested():
                yield self.pending
            return
        session = self._sessions()
        try:
            await self._claim(session)
        except BaseException:
            await session.close()
            raise
        self.writing = True
        try:
            yield session
            await session.flush()
        except Exception as exc:
            await self._close(session)
            first = await self.answered_before() if self._postgresql else None
            if first is not None:
                raise Replayed(first) from exc
            raise
        except BaseException:
            await self._close(session)
            raise
        self.pending = session

    async def _close(self, session: AsyncSession) -> None:
        self.writing = False
        self.committed_hooks.clear()
        await session.close()

    async def _claim(self, session: AsyncSession) -> None:
        assert self.environment_id is not None and self.key is not None
        if self._postgresql:
            locked, found = await repository.lock_and_find(session, self._lock_id(), self.environment_id, self.key)
            if not locked:
                raise idempotency_error(
                    409, f"a request with this {HEADER} is still being processed; send it again once it has finished"
                )
        else:
            found = await repository.find(session, self.environment_id, self.key)
        if found is None:
            return
        if _expired(found):
            await repository.forget(session, self.environment_id, self.key)
            return
        self._answer_again(found)

    def _answer_again(self, found: Any) -> NoReturn:
        """The key's record (not expired): this request again is answered as then; another request is refused."""
        if found.fingerprint != self.fingerprint:
            raise _other_request()
        raise Replayed(_stored_answer(found))

    async def replay_if_recorded(self) -> None:
        """See the module-level `replay_if_recorded`."""
        assert self.environment_id is not None and self.key is not None
        async with self._sessions() as session:
            found = await repository.find(session, self.environment_id, self.key)
        if found is not None and not _expired(found):
            self._answer_again(found)

    async def answered_before(self) -> Answer | None:
        """The recorded answer of an earlier request with the key and this request's fingerprint, if there is one:
        asked when this request failed (its write meeting the first one's, or a check before its write finding
        what the first one made: 409 `already_exists`, 404 for what it deleted), so that a retry is answered as its
        first attempt was rather than failing against it."""
        if not self.keyed:
            return None
        assert self.environment_id is not None and self.key is not None
        try:
            async with self._sessions() as session:
                found = await repository.find(session, self.environment_id, self.key)
        except Exception:
            return None
        if found is None or found.fingerprint != self.fingerprint or _expired(found):
            return None
        return _stored_answer(found)

    async def record(self, answer: Answer) -> Answer:
        """Store the answer beside the write and commit both; an answer 5xx rolls the write back instead. Returns
        the answer to send: this one, or a first request's when that one committed under the key meanwhile."""
        session, self.pending = self.pending, None
        assert session is not None and self.environment_id is not None
        self.writing = False
        try:
            if answer.status_code >= 500:
                return answer
            kept = [[name.decode("latin-1"), value.decode("latin-1")] for name, value in answer.headers]
            record: dict[str, Any] = {
                "environment_id": self.environment_id,
                "key": self.key,
                "fingerprint": self.fingerprint,
                "status_code": answer.status_code,
                "headers": [header for header in kept if header[0].encode("latin-1") not in _NOT_KEPT],
                "body": answer.body,
                "created_at": utcnow(),
            }
            await repository.add(session, record)
            await session.commit()
        except IntegrityError:
            await session.close()
            first = await self.answered_before()
            if first is None:
                raise
            return first
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            committed = await self._committed()
            if committed is None:
                raise OutcomeUnknown() from exc
            if not committed:
                raise
            log.info("the connection was lost at COMMIT; the write was committed", environment_id=self.environment_id)
        finally:
            await session.close()
        await self._committed_now()
        return answer

    async def _committed_now(self) -> None:
        """The request's write has committed: what waited for it runs, in units of work of its own (the key is
        spent: a unit of work opened now is not the request's write)."""
        self.key = None
        hooks, self.committed_hooks = self.committed_hooks, []
        for hook in hooks:
            try:
                await hook()
            except Exception:
                log.warning("work waiting for a write's commit failed", exc_info=True)

    async def _committed(self) -> bool | None:
        """Whether this request's record (so its write) was committed; None if the database cannot tell now."""
        assert self.environment_id is not None and self.key is not None
        try:
            async with transaction(self._sessions) as session:
                if self._postgresql:
                    await session.execute(_OUTCOME_WAIT)
                    await session.execute(_LOCK, {"lock": self._lock_id()})
                found = await repository.find(session, self.environment_id, self.key)
        except Exception as exc:
            log.warning("could not learn whether a write was committed", error_type=type(exc).__name__)
            return None
        return found is not None and found.fingerprint == self.fingerprint

    async def discard(self) -> None:
        """End an unrecorded unit of work (the request failed after it): rolled back."""
        session, self.pending = self.pending, None
        self.writing = False
        self.committed_hooks.clear()
        if session is not None:
            await session.close()


def _other_request() -> APIError:
    return idempotency_error(
        400,
        f"this {HEADER} was used for another request (another method, path, query or body) in the last "
        f"{KEPT_FOR.total_seconds() / 3600:g} hours; send a new request with a new key",
    )


def _expired(found: Any) -> bool:
    return bool(found.created_at <= utcnow() - KEPT_FOR)


def _stored_answer(found: Any) -> Answer:
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in found.headers]
    return Answer(found.status_code, [*headers, (REPLAYED_HEADER.lower().encode(), b"true")], found.body)


_CURRENT: ContextVar[RequestWrite | None] = ContextVar("flexsync_request_write", default=None)


def begin(write: RequestWrite) -> Any:
    """Make `write` the current task's request write; returns the token `end` takes."""
    return _CURRENT.set(write)


def end(token: Any) -> None:
    _CURRENT.reset(token)


def current() -> RequestWrite | None:
    """The request write of the running request, if this is its task (a task it started is not)."""
    write = _CURRENT.get()
    if write is None or write._task is not asyncio.current_task():
        return None
    return write


def keyed_write() -> RequestWrite | None:
    """The running request's write when it carries a key and its environment is known: its units of work are
    the request's write (`AppContext.transaction`)."""
    write = current()
    return write if write is not None and write.keyed else None


async def after_commit(hook: Callable[[], Awaitable[None]]) -> None:
    """Run `hook` once the running request's write has committed: now, unless the request carries a key and its
    write is still pending (then when the middleware commits it with the key's record; never if it rolls back).
    For work outside the database that must not happen unless the write did (deleting what it replaced)."""
    write = keyed_write()
    if write is not None and write.writing:
        write.committed_hooks.append(hook)
        return
    await hook()


async def replay_if_recorded() -> None:
    """For a request whose work begins outside its write (Stripe calls whose results other processes must see
    before the write commits): when the request was made before under its key, answer as then (`Replayed`) or
    refuse another request under the key (400), before anything runs again. A no-op without a key."""
    write = keyed_write()
    if write is not None and not write.writing:
        await write.replay_if_recorded()


def pending_session() -> AsyncSession | None:
    """The running request's write, held uncommitted for its key's record, if there is one: reads that build the
    answer see what the request wrote through it."""
    write = keyed_write()
    return write.pending if write is not None else None


def in_pending_write() -> bool:
    """Whether the running request's write is open and not committed yet (a unit of work opened apart from it
    now would, on SQLite, wait for the request's own write lock)."""
    write = keyed_write()
    return write is not None and write.writing


def note_environment(environment_id: str) -> None:
    """The request's environment, once its caller is known: the key's scope."""
    write = current()
    if write is not None:
        write.environment_id = environment_id


def use_form_key(key: str, method: str, path: str, body: bytes) -> None:
    """A dashboard form's key (its hidden field), for the form's request."""
    write = current()
    if write is not None and 0 < len(key) <= MAX_KEY_LENGTH:
        write.key = key
        write.fingerprint = fingerprint(method, path, b"", body)
