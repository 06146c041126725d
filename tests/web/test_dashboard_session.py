"""Dashboard sessions: the signed cookie holds a random id, the database decides what it opens and for how long.

The HTTP tests run a real `flexsync serve` on each database with FLEXSYNC_DASHBOARD_IDLE_MINUTES=5. Time passing
is simulated by moving a session's stored times back (what the server compares with its clock), never by
sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.models import DashboardSession, utcnow
from flexsync.tenancy import dashboard_sessions
from flexsync.tenancy import service as tenancy
from flexsync.web.session import SessionSigner, signing_secrets
from tests.dashboard_support import csrf_token, signed_in
from tests.support import (
    TEST_ENCRYPTION_KEY,
    DatabaseUnderTest,
    Server,
    TenantContext,
    new_tenant,
    start_server,
    wait_for,
)
from tests.sync_support import start_worker

IDLE_MINUTES = 5
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0"


def signer(*keys: str) -> SessionSigner:
    return SessionSigner(signing_secrets(list(keys or (TEST_ENCRYPTION_KEY,))))


def test_a_cookie_holds_a_random_id_and_its_signature_and_nothing_else() -> None:
    first, second = dashboard_sessions.new_session_id(), dashboard_sessions.new_session_id()
    assert first != second
    assert len(first) >= 43  # 32 random bytes, url-safe base64: 256 bits
    cookie = signer().dumps(first)
    session_id, signature = cookie.split(".")
    assert session_id == first and signature
    # Another process with the same keys (or this one after a restart) reads it.
    assert signer().loads(cookie) == first


def test_a_changed_cookie_is_refused() -> None:
    session_id = dashboard_sessions.new_session_id()
    cookie = signer().dumps(session_id)
    other = dashboard_sessions.new_session_id()
    assert signer().loads(f"{other}.{cookie.split('.')[1]}") is None
    assert signer().loads(cookie[:-1] + ("A" if cookie[-1] != "A" else "B")) is None
    assert signer().loads("") is None
    assert signer().loads("not-a-cookie") is None
    assert signer(Fernet.generate_key().decode()).loads(cookie) is None
    # The former cookie (key id, nonce and time, signed the same way) names no session.
    assert signer().loads(signer().dumps("key_01ABC.nonce.1700000000")) is None


def test_cookies_survive_an_encryption_key_rotation() -> None:
    newest = Fernet.generate_key().decode()
    session_id = dashboard_sessions.new_session_id()
    cookie = signer(TEST_ENCRYPTION_KEY).dumps(session_id)
    rotated = signer(newest, TEST_ENCRYPTION_KEY)
    assert rotated.loads(cookie) == session_id
    assert rotated.csrf_valid(session_id, signer(TEST_ENCRYPTION_KEY).csrf_token(session_id))
    # Once the old key is dropped, its cookies open nothing.
    assert signer(newest).loads(cookie) is None


def test_a_csrf_token_belongs_to_one_session() -> None:
    first, second = dashboard_sessions.new_session_id(), dashboard_sessions.new_session_id()
    token = signer().csrf_token(first)
    assert signer().csrf_valid(first, token)
    assert not signer().csrf_valid(second, token)
    assert not signer().csrf_valid(first, None)
    assert not signer().csrf_valid(first, "")


def test_the_client_description_is_short() -> None:
    describe = dashboard_sessions.describe_client
    assert describe(FIREFOX, "203.0.113.7") == "Firefox on Linux, 203.0.113.7"
    edge = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36 Edg/120.0"
    assert describe(edge, None) == "Edge on Windows"
    assert describe("python-httpx/0.28.1", "127.0.0.1") == "python-httpx/0.28.1, 127.0.0.1"
    assert describe("", None) == "unknown client"
    assert len(describe("x" * 5000, "2001:db8::1")) <= dashboard_sessions.CLIENT_LENGTH


# Over HTTP, against `flexsync serve` on each database.


@pytest.fixture(scope="module")
def server(module_db: DatabaseUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(
        module_db,
        tmp_path_factory.mktemp("session-logs"),
        "--no-worker",
        FLEXSYNC_DASHBOARD_IDLE_MINUTES=str(IDLE_MINUTES),
    )
    yield running
    running.stop()


@pytest.fixture
def tenant(module_db: DatabaseUnderTest, server: Server) -> TenantContext:
    return new_tenant(module_db, server.base_url)


@dataclass(frozen=True)
class Row:
    api_key_id: str
    client: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime


def session_id(client: httpx.Client) -> str:
    return client.cookies["flexsync_session"].split(".")[0]


def row(db: DatabaseUnderTest, client: httpx.Client) -> Row | None:
    async def read(session: AsyncSession) -> Row | None:
        found = await session.get(DashboardSession, dashboard_sessions.stored_id(session_id(client)))
        if found is None:
            return None
        return Row(found.api_key_id, found.client, found.created_at, found.last_seen_at, found.expires_at)

    return db.run(read)


def move_back(db: DatabaseUnderTest, client: httpx.Client, **columns: timedelta) -> None:
    """As if the session's times were longer ago: `last_seen_at=timedelta(minutes=6)` and the like."""

    async def write(session: AsyncSession) -> None:
        found = await session.get(DashboardSession, dashboard_sessions.stored_id(session_id(client)))
        assert found is not None
        for column, by in columns.items():
            setattr(found, column, getattr(found, column) - by)

    db.run(write)


def key_id(db: DatabaseUnderTest, tenant: TenantContext) -> str:
    async def read(session: AsyncSession) -> str:
        scope = await tenancy.resolve_api_key(session, tenant.api_key)
        assert scope is not None
        return scope.api_key_id

    return db.run(read)


def opens(client: httpx.Client, path: str = "/customers") -> bool:
    response = client.get(path)
    assert response.status_code in (200, 303), response.text
    return response.status_code == 200


def sign_in_notice(client: httpx.Client) -> str | None:
    """Where a page sends a browser whose session ended: None for a plain sign-in, else the notice's code."""
    response = client.get("/customers")
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("/signin?next=/customers")
    return location.split("&notice=")[1] if "&notice=" in location else None


def test_the_database_keeps_the_ids_hash_the_key_the_client_and_the_times(
    module_db: DatabaseUnderTest, server: Server, tenant: TenantContext
) -> None:
    before = utcnow()
    with signed_in(server.base_url, tenant.api_key, **{"user-agent": FIREFOX}) as client:
        stored = row(module_db, client)
        assert stored is not None
        assert stored.api_key_id == key_id(module_db, tenant)
        assert stored.client == "Firefox on Linux, 127.0.0.1"
        assert before - timedelta(seconds=1) <= stored.created_at == stored.last_seen_at <= utcnow()
        assert stored.expires_at == stored.created_at + timedelta(hours=12)

        async def ids(session: AsyncSession) -> list[str]:
            return list((await session.execute(select(DashboardSession.id))).scalars())

        # The table holds no working session id: only their hashes.
        assert session_id(client) not in module_db.run(ids)


def test_signing_out_on_one_server_ends_the_session_on_another(
    module_db: DatabaseUnderTest, server: Server, tenant: TenantContext, tmp_path: Path
) -> None:
    other = start_server(module_db, tmp_path, "--no-worker")
    try:
        with signed_in(server.base_url, tenant.api_key) as client:
            copy = dict(client.cookies)
            with httpx.Client(base_url=other.base_url, cookies=copy) as elsewhere:
                assert opens(elsewhere)
                token = csrf_token(elsewhere.get("/customers").text)
                signed_out = elsewhere.post("/signout", data={"csrf_token": token})
                assert signed_out.headers["location"] == "/signin?notice=signed-out"
            assert row(module_db, client) is None
            # The first server's browser still holds its copy: it opens nothing, nor does any other copy.
            assert sign_in_notice(client) is None
            with httpx.Client(base_url=server.base_url, cookies=copy) as stolen:
                assert sign_in_notice(stolen) is None
                assert stolen.get("/signin").status_code == 200
    finally:
        other.stop()


def test_an_idle_session_ends(module_db: DatabaseUnderTest, server: Server, tenant: TenantContext) -> None:
    with signed_in(server.base_url, tenant.api_key) as idle, signed_in(server.base_url, tenant.api_key) as active:
        move_back(module_db, idle, last_seen_at=timedelta(minutes=IDLE_MINUTES, seconds=1))
        assert sign_in_notice(idle) == "session-expired"
        page = idle.get("/signin?next=/customers&notice=session-expired").text
        assert "Your session ended: it was idle too long" in page

        # Just short of the limit a page opens, and moves the idle deadline on.
        move_back(module_db, active, last_seen_at=timedelta(minutes=IDLE_MINUTES - 1))
        viewed = utcnow()
        assert opens(active)
        stored = row(module_db, active)
        assert stored is not None and stored.last_seen_at >= viewed - timedelta(seconds=1)
        move_back(module_db, active, last_seen_at=timedelta(minutes=IDLE_MINUTES - 1))
        assert opens(active)


def test_a_page_view_writes_last_seen_at_most_once_a_minute(
    module_db: DatabaseUnderTest, server: Server, tenant: TenantContext
) -> None:
    with signed_in(server.base_url, tenant.api_key) as client:
        signed_in_row = row(module_db, client)
        assert signed_in_row is not None
        for path in ("/customers", "/sync-jobs", "/webhook-events"):
            assert opens(client, path)
        unchanged = row(module_db, client)
        assert unchanged is not None and unchanged.last_seen_at == signed_in_row.last_seen_at

        move_back(module_db, client, last_seen_at=timedelta(seconds=61))
        viewed = utcnow()
        assert opens(client)
        moved = row(module_db, client)
        assert moved is not None and moved.last_seen_at >= viewed - timedelta(seconds=1)


def test_a_session_ends_12_hours_after_sign_in_however_active(
    module_db: DatabaseUnderTest, server: Server, tenant: TenantContext
) -> None:
    with signed_in(server.base_url, tenant.api_key) as client:
        # Signed in 12 hours ago and active a moment ago.
        move_back(module_db, client, created_at=timedelta(hours=12), expires_at=timedelta(hours=12))
        assert sign_in_notice(client) == "session-expired"


def test_a_revoked_key_ends_every_session_at_once(
    module_db: DatabaseUnderTest, server: Server, tenant: TenantContext
) -> None:
    with signed_in(server.base_url, tenant.api_key) as first, signed_in(server.base_url, tenant.api_key) as second:
        assert opens(first) and opens(second)
        revoked = key_id(module_db, tenant)

        async def revoke(session: AsyncSession) -> None:
            await tenancy.revoke_api_key(session, revoked)

        module_db.run(revoke)
        assert sign_in_notice(first) == "key-revoked"
        assert sign_in_notice(second) == "key-revoked"


def test_sign_out_everywhere_ends_every_session_of_the_key_and_no_other(
    module_db: DatabaseUnderTest, server: Server, tenant: TenantContext
) -> None:
    neighbour = new_tenant(module_db, server.base_url)
    with (
        signed_in(server.base_url, tenant.api_key) as first,
        signed_in(server.base_url, tenant.api_key) as second,
        signed_in(server.base_url, tenant.api_key) as third,
        signed_in(server.base_url, neighbour.api_key) as other_key,
    ):
        token = csrf_token(first.get("/customers").text)
        answer = first.post("/signout-everywhere", data={"csrf_token": token})
        assert answer.status_code == 303
        assert answer.headers["location"] == "/signin?ended=3"
        assert "You are signed out everywhere: 3 sessions of this API key ended." in first.get("/signin?ended=3").text
        for client in (first, second, third):
            assert sign_in_notice(client) is None
        assert opens(other_key)


def test_every_sign_in_gives_a_new_session_id(
    module_db: DatabaseUnderTest, server: Server, tenant: TenantContext
) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        token = csrf_token(client.get("/signin").text)
        before_sign_in = session_id(client)
        assert client.post("/signin", data={"api_key": tenant.api_key, "csrf_token": token}).status_code == 303
        first = session_id(client)
        assert first != before_sign_in
        # The id planted before sign-in opens nothing (no fixation).
        with httpx.Client(base_url=server.base_url) as planted:
            planted.cookies.set("flexsync_session", signer().dumps(before_sign_in))
            assert sign_in_notice(planted) is None

        # Signing in again (here over the running session) replaces it.
        first_cookie = client.cookies["flexsync_session"]
        token = csrf_token(client.get("/customers").text)
        again = client.post("/signin", data={"api_key": tenant.api_key, "csrf_token": token})
        assert again.status_code == 303
        assert session_id(client) not in (first, before_sign_in)
        assert opens(client)
        with httpx.Client(base_url=server.base_url, cookies={"flexsync_session": first_cookie}) as old:
            assert sign_in_notice(old) is None


def test_sign_out_needs_its_csrf_token(server: Server, tenant: TenantContext) -> None:
    with signed_in(server.base_url, tenant.api_key) as client:
        for path in ("/signout", "/signout-everywhere"):
            refused = client.post(path, data={"csrf_token": "x" * 43})
            assert refused.status_code == 403
            assert "Not allowed" in refused.text
            assert client.post(path, data={}).status_code == 403
        assert opens(client)


def test_the_session_cookie_keeps_its_flags(server: Server, tenant: TenantContext) -> None:
    for headers, secure in (({}, False), ({"x-forwarded-proto": "https"}, True)):
        with httpx.Client(base_url=server.base_url, headers=headers) as client:
            form = client.get("/signin")
            # httpx keeps a Secure cookie for https:// only: this plain connection stands for the proxy's.
            anonymous = form.headers["set-cookie"].split(";")[0]
            answer = client.post(
                "/signin",
                data={"api_key": tenant.api_key, "csrf_token": csrf_token(form.text)},
                headers={"cookie": anonymous},
            )
            assert answer.status_code == 303
            cookie, *flags = (part.strip() for part in answer.headers["set-cookie"].split(";"))
            assert cookie.startswith("flexsync_session=") and cookie != anonymous
            assert {"httponly", "samesite=lax", "path=/", "max-age=43200"} <= {flag.lower() for flag in flags}
            assert ("secure" in (flag.lower() for flag in flags)) is secure
            assert tenant.api_key[4:] not in cookie


def test_a_signed_in_not_found_page_keeps_the_navigation(server: Server, tenant: TenantContext) -> None:
    with signed_in(server.base_url, tenant.api_key) as client:
        for path in ("/customers/cust_nobody", "/no-such-page"):
            page = client.get(path)
            assert page.status_code == 404
            assert 'aria-label="Main"' in page.text
            assert 'action="/signout"' in page.text and "Back to customers" in page.text
    with httpx.Client(base_url=server.base_url) as anonymous:
        page = anonymous.get("/no-such-page")
        assert page.status_code == 404
        assert 'aria-label="Main"' not in page.text and 'action="/signout"' not in page.text


def test_pruning_removes_the_sessions_that_ended(module_db: DatabaseUnderTest, tmp_path: Path) -> None:
    """The workers' hourly sweep, which runs first when a worker starts."""
    live, revoked = new_tenant(module_db, ""), new_tenant(module_db, "")
    live_key, revoked_key = key_id(module_db, live), key_id(module_db, revoked)
    now = utcnow()

    async def fill(session: AsyncSession) -> dict[str, str]:
        started = {
            name: await dashboard_sessions.start(session, key, "test", now - age)
            for name, key, age in (
                ("live", live_key, timedelta(minutes=1)),
                ("idle", live_key, timedelta(hours=3)),
                ("revoked", revoked_key, timedelta(minutes=1)),
            )
        }
        await session.execute(
            update(DashboardSession)
            .where(DashboardSession.id == dashboard_sessions.stored_id(started["idle"]))
            .values(expires_at=now + timedelta(hours=9))
        )
        expired = await dashboard_sessions.start(session, live_key, "test", now - timedelta(hours=12, seconds=1))
        await session.execute(
            update(DashboardSession)
            .where(DashboardSession.id == dashboard_sessions.stored_id(expired))
            .values(last_seen_at=now)
        )
        await tenancy.revoke_api_key(session, revoked_key)
        return {**started, "expired": expired}

    ids = module_db.run(fill)

    async def left(session: AsyncSession) -> set[str]:
        stored = {dashboard_sessions.stored_id(value): name for name, value in ids.items()}
        rows = (await session.execute(select(DashboardSession.id))).scalars()
        return {stored[found] for found in rows if found in stored}

    assert module_db.run(left) == {"live", "idle", "revoked", "expired"}
    worker = start_worker(module_db, tmp_path, FLEXSYNC_DASHBOARD_IDLE_MINUTES="120")
    try:
        wait_for(lambda: module_db.run(left) == {"live"}, what="the worker to prune the ended sessions")
        assert "pruned ended dashboard sessions" in worker.log()
    finally:
        worker.stop()
