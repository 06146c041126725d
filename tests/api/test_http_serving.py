"""How `serve` treats its clients' connections: an idle keep-alive connection stays open longer than the idle
timeout of the usual load balancers (60 s), so that they, not flexsync, close it. A server that closes first
races the proxy's (or any client's) next request on that connection, which then fails: a 502 at the proxy, a
"connection reset" at a client (seen in this suite when uvicorn's own default of 5 s applied)."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support import DatabaseUnderTest, start_server

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _response(sock: socket.socket) -> bytes:
    """One whole response to REQUEST (its body is short and has a Content-Length), or b"" if the server closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(4096)
    return head


def answered_after_idle(base_url: str, idle_seconds: float) -> bool:
    """Whether a second request, sent on the same connection after it was idle this long, is answered."""
    address = urlsplit(base_url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(REQUEST)
        assert _response(sock).startswith(b"HTTP/1.1 200"), "the first request was not answered"
        time.sleep(idle_seconds)
        try:
            sock.sendall(REQUEST)
            return _response(sock).startswith(b"HTTP/1.1 200")
        except (ConnectionResetError, BrokenPipeError):
            return False


def test_an_idle_connection_stays_open_longer_than_a_proxy_keeps_its_own(
    fresh_db: DatabaseUnderTest, tmp_path: Path
) -> None:
    """Past uvicorn's 5 s the connection still answers (the default is 75 s); FLEXSYNC_HTTP_KEEP_ALIVE_SECONDS
    sets it (1 s: closed after 2.5 s idle, so the check would see a connection closed too early)."""
    if fresh_db.backend != "sqlite":
        pytest.skip("the same on either database")

    def answered(idle_seconds: float, **env: str) -> bool:
        server = start_server(fresh_db, tmp_path, "--no-worker", **env)
        try:
            return answered_after_idle(server.base_url, idle_seconds)
        finally:
            server.stop()

    # Both servers at once: the test waits out the longer idle time only.
    with ThreadPoolExecutor(2) as pool:
        default = pool.submit(answered, 6.0)
        short = pool.submit(answered, 2.5, FLEXSYNC_HTTP_KEEP_ALIVE_SECONDS="1")
        assert default.result()
        assert not short.result()
