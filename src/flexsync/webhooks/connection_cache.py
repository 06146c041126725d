"""Which connection receives an environment's Stripe webhooks, cached for a few seconds per process.

Every delivery needs the connection and its signing secrets. Reading and decrypting them per request would
cost a query and a Fernet decryption each time; the cache does both once per fill. A connection that is
created, paused or deleted is seen within TTL_SECONDS; a rotated signing secret is seen at once, because a
delivery that fails verification against cached secrets reloads them before giving up.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from flexsync.connections.repository import get_live_connection
from flexsync.connections.secrets import webhook_secrets
from flexsync.context import AppContext
from flexsync.sync.inbound import ConnectionView

TTL_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class ReceivingConnection:
    # Its settings too: events applied as they arrive follow a settings change within TTL_SECONDS.
    view: ConnectionView
    # Decrypted, newest first: during a rotation both the new and the old secret verify.
    webhook_secrets: tuple[str, ...]
    loaded_at: float


class ConnectionCache:
    def __init__(self, db: AppContext, ttl: float = TTL_SECONDS) -> None:
        self._db = db
        self._ttl = ttl
        self._entries: dict[tuple[str, str], ReceivingConnection] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[ReceivingConnection | None]] = {}

    async def get(self, tenant_id: str, environment_id: str) -> ReceivingConnection | None:
        """The environment's active Stripe connection with at least one signing secret, or None."""
        entry = self._entries.get((tenant_id, environment_id))
        if entry is not None and time.monotonic() - entry.loaded_at < self._ttl:
            return entry
        return await self.reload(tenant_id, environment_id)

    async def reload(self, tenant_id: str, environment_id: str) -> ReceivingConnection | None:
        """Read the connection again; concurrent callers for one environment share a single read."""
        key = (tenant_id, environment_id)
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[ReceivingConnection | None] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            entry = await self._read(tenant_id, environment_id)
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # marked retrieved: with no one else waiting, asyncio would log it as lost
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            del self._loading[key]
        if entry is None:
            self._entries.pop(key, None)
        else:
            self._entries[key] = entry
        future.set_result(entry)
        return entry

    async def _read(self, tenant_id: str, environment_id: str) -> ReceivingConnection | None:
        async with self._db.read() as session:
            connection = await get_live_connection(session, tenant_id, environment_id)
        view = ConnectionView.of(connection)
        if view is None or connection is None or not connection.webhook_secrets_encrypted:
            return None
        return ReceivingConnection(
            view=view,
            webhook_secrets=tuple(webhook_secrets(self._db.box, connection)),
            loaded_at=time.monotonic(),
        )
