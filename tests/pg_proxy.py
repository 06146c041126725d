"""A TCP proxy between flexsync and PostgreSQL that can lose a connection the way a network or a failover does:
right after forwarding a COMMIT, before its answer comes back, so the client cannot know whether it happened."""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

# How asyncpg ends a transaction: a simple query message ('Q', its length, the text, NUL).
COMMIT_MESSAGE = b"COMMIT;\x00"


@dataclass
class CommitCutter:
    upstream: tuple[str, int]
    port: int = 0
    # Cut the connection that next sends a COMMIT after it has sent these bytes (a value the transaction wrote, such
    # as a new customer's external_id): that transaction's COMMIT, not another's (a background sweep commits too).
    marker: bytes | None = None
    # With the cut, end every connection and refuse new ones until `reopen` (the database "away").
    then_refuse: bool = False
    refusing: bool = False
    cuts: int = 0
    _listener: socket.socket = field(init=False)
    _pairs: list[tuple[socket.socket, socket.socket]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> CommitCutter:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def url(self, database_url: str) -> str:
        from sqlalchemy.engine import make_url

        return make_url(database_url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def arm(self, marker: str, *, then_refuse: bool = False) -> None:
        with self._lock:
            self.marker, self.then_refuse = marker.encode(), then_refuse

    def reopen(self) -> None:
        with self._lock:
            self.refusing = False

    def stop(self) -> None:
        self._listener.close()
        self._close_all()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, from_client: bool) -> None:
        marked = False
        try:
            while data := source.recv(65536):
                target.sendall(data)
                if not from_client:
                    continue
                marked = marked or (self.marker is not None and self.marker in data)
                if marked and COMMIT_MESSAGE in data and self._take_cut():
                    self._cut(source, target)
                    return
        except OSError:
            pass
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _take_cut(self) -> bool:
        with self._lock:
            if self.marker is None:
                return False
            self.marker = None
            self.cuts += 1
            if self.then_refuse:
                self.refusing = True
            return True

    def _cut(self, client: socket.socket, server: socket.socket) -> None:
        # The COMMIT has gone to PostgreSQL; its answer never reaches the client.
        for sock in (client, server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self.refusing:
            self._close_all()

    def _close_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
