"""Helpers shared by the test suite: databases, a running flexsync process, API clients."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.crypto import SecretBox
from flexsync.db import create_engine, migrate, session_factory, transaction
from flexsync.ids import new_id
from flexsync.models import Customer, StripeConnection
from flexsync.tenancy import service as tenancy

T = TypeVar("T")
PG_ENV = "FLEXSYNC_TEST_DATABASE_URL"
# Every flexsync the suite runs waits less than a user's defaults before trying again (what it tries and how often
# is the same): a failed Stripe request after 0.1 s (0.5 s), a failed webhook event after 0.5 s (2 s), and due
# events are looked for every 0.25 s (2 s). A test that needs other values sets them.
SUITE_TIMERS = {
    "FLEXSYNC_STRIPE_RETRY_FIRST_SECONDS": "0.1",
    "FLEXSYNC_WEBHOOK_RETRY_FIRST_SECONDS": "0.5",
    "FLEXSYNC_WEBHOOK_RETRY_SWEEP_SECONDS": "0.25",
}
# The shared contract-test server's: the test of a write behind another process's SQLite write lock does not wait
# the default 15 s out; and its webhook retry sweep (no contract test waits for one) stays out of the way of the
# test whose request must meet a connection PostgreSQL dropped: a sweep that meets it first replaces it.
SERVER_TIMERS = {"FLEXSYNC_SQLITE_BUSY_TIMEOUT_SECONDS": "2", "FLEXSYNC_WEBHOOK_RETRY_SWEEP_SECONDS": "60"}
# A fixed Fernet key for tests only; production keys come from FLEXSYNC_ENCRYPTION_KEYS.
TEST_ENCRYPTION_KEY = "3n5kpH0c8Mq3Q1pG9ZtZ6y0l0h2C8y0m4mYzq1i6Qk8="


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_http(url: str, timeout: float = 60.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@dataclass
class DatabaseUnderTest:
    """A database of its own for one test session, migrated by Alembic like production."""

    url: str
    backend: str

    def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run `work` in one committed transaction on a fresh engine."""

        async def runner() -> T:
            engine = create_engine(self.url, null_pool=True)
            try:
                async with transaction(session_factory(engine)) as session:
                    return await work(session)
            finally:
                await engine.dispose()

        return asyncio.run(runner())


@contextmanager
def sqlite_database(tmp_dir: Path) -> Iterator[DatabaseUnderTest]:
    url = f"sqlite+aiosqlite:///{tmp_dir / 'flexsync-test.db'}"
    migrate(url)
    yield DatabaseUnderTest(url=url, backend="sqlite")


def _asyncpg_dsn(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


@contextmanager
def postgres_database(admin_url: str, *, migrated: bool = True) -> Iterator[DatabaseUnderTest]:
    """A new PostgreSQL database, dropped afterwards; empty unless `migrated`."""
    name = f"flexsync_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(admin_url))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        if migrated:
            migrate(url)
        yield DatabaseUnderTest(url=url, backend="postgresql")
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def own_database(backend: str, tmp_dir: Path) -> Iterator[DatabaseUnderTest]:
    """A migrated database of its own on `backend`; PostgreSQL is skipped, with the reason, when not configured."""
    if backend == "sqlite":
        with sqlite_database(tmp_dir) as db:
            yield db
        return
    admin_url = os.environ.get(PG_ENV)
    if not admin_url:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test)")
    with postgres_database(admin_url) as db:
        yield db


def wait_for(check: Callable[[], T | None], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll `check` every 50 ms until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Process:
    """A child process the tests started, with its log file."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def kill(self) -> None:
        self.process.kill()


@dataclass(kw_only=True)
class Server(Process):
    """A real `flexsync serve` process."""

    base_url: str


def server_env(db: DatabaseUnderTest, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXSYNC_")}
    env.update(
        SUITE_TIMERS,
        FLEXSYNC_DATABASE_URL=db.url,
        FLEXSYNC_ENCRYPTION_KEYS=TEST_ENCRYPTION_KEY,
        FLEXSYNC_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def start_server(db: DatabaseUnderTest, log_dir: Path, *args: str, **env: str) -> Server:
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    base_url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "flexsync", "serve", "--port", str(port), "--no-migrate", *args],
            env=server_env(db, **{"FLEXSYNC_PUBLIC_URL": base_url, **env}),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_http(f"{base_url}/healthz", process=process)
    except Exception:
        process.kill()
        process.wait(10)
        raise RuntimeError(f"flexsync did not start:\n{log_path.read_text(errors='replace')}") from None
    return Server(base_url=base_url, process=process, log_path=log_path)


@contextmanager
def running_server(db: DatabaseUnderTest, log_dir: Path, *args: str, **env: str) -> Iterator[Server]:
    """`start_server`, stopped at the end of the `with`."""
    running = start_server(db, log_dir, *args, **env)
    try:
        yield running
    finally:
        running.stop()


@dataclass
class TenantContext:
    """A fresh tenant, environment and API key: tests stay apart without wiping the database."""

    tenant_id: str
    environment_id: str
    api_key: str
    base_url: str

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"x-api-key": self.api_key, **headers}, timeout=30)


def new_tenant(db: DatabaseUnderTest, base_url: str) -> TenantContext:
    async def work(session: AsyncSession) -> TenantContext:
        tenant = await tenancy.create_tenant(session, "Test tenant")
        env = await tenancy.create_environment(session, tenant.id, "test")
        key = await tenancy.create_api_key(session, tenant.id, env.id)
        return TenantContext(tenant.id, env.id, key.key, base_url)

    return db.run(work)


def customer_row(tenant: TenantContext, name: str) -> Customer:
    """A customer row of this tenant's environment (external_id: the name in lower case), not yet added."""
    return Customer(
        id=new_id("cust"),
        tenant_id=tenant.tenant_id,
        environment_id=tenant.environment_id,
        external_id=name.lower().replace(" ", "-"),
        name=name,
        created_by="test",
        updated_by="test",
    )


def store_connection(
    db: DatabaseUnderTest,
    tenant: TenantContext,
    *,
    name: str,
    secret_key: str,
    publishable_key: str,
    webhook_secrets: Sequence[str],
    settings: dict[str, Any] | None = None,
    mode: str = "test",
    status: str = "active",
) -> str:
    """A Stripe connection row, stored as the connections API stores it (secrets encrypted); returns its id."""
    box = SecretBox([TEST_ENCRYPTION_KEY])

    async def work(session: AsyncSession) -> str:
        connection = StripeConnection(
            id=new_id("conn"),
            tenant_id=tenant.tenant_id,
            environment_id=tenant.environment_id,
            name=name,
            provider="stripe",
            status=status,
            mode=mode,
            secret_key_encrypted=box.encrypt(secret_key),
            secret_key_last4=secret_key[-4:],
            publishable_key=publishable_key,
            webhook_secrets_encrypted=[box.encrypt(secret) for secret in webhook_secrets],
            settings=settings or {},
        )
        session.add(connection)
        await session.flush()
        return connection.id

    return db.run(work)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The contract's error shape, with the expected status and code."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["http_status_code"] == status
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["details"], dict)
    return body


@dataclass
class LocalStripe:
    """localstripe, a stateful fake Stripe server, on its own loopback port (see TESTING.md)."""

    base_url: str
    process: subprocess.Popen[bytes]

    def wipe(self) -> None:
        httpx.delete(f"{self.base_url}/_config/data", timeout=10).raise_for_status()

    def register_webhook(self, webhook_id: str, url: str, secret: str, events: list[str] | None = None) -> None:
        body = {
            "url": url,
            "secret": secret,
            "events": events or ["customer.created", "customer.updated", "customer.deleted"],
        }
        httpx.post(f"{self.base_url}/_config/webhooks/{webhook_id}", json=body, timeout=10).raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


LOCALSTRIPE_START = (
    "import localstripe.resources as r; r.Store.dump_to_disk = lambda self: None; "
    "from localstripe.server import start; start()"
)


def start_localstripe(log_dir: Path) -> LocalStripe:
    port = free_port()
    with (log_dir / f"localstripe-{port}.log").open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-c", LOCALSTRIPE_START, "--port", str(port), "--from-scratch"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base_url}/v1/customers", process=process)
    except Exception:
        process.kill()
        process.wait(10)
        raise
    return LocalStripe(base_url=base_url, process=process)


async def drop_every_connection(db_url: str) -> int:
    """What a PostgreSQL restart or failover does to the processes using the database: every connection to it
    ends (but this one's, made for the purpose). Returns how many were ended."""
    outsider = create_engine(db_url, null_pool=True)
    try:
        async with outsider.connect() as connection:
            terminated = await connection.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :database AND pid <> pg_backend_pid()"
                ),
                {"database": make_url(db_url).database},
            )
            return int(terminated or 0)
    finally:
        await outsider.dispose()
