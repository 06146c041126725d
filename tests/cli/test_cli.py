"""The `flexsync` command line against an empty SQLite file and PostgreSQL database: run in-process through its
entry point (tests/cli_support.py), and as a real process where the process is the point (a server or worker
waiting for its database)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.db import alembic_config
from tests.cli_support import Completed, run_flexsync
from tests.support import (
    PG_ENV,
    TEST_ENCRYPTION_KEY,
    DatabaseUnderTest,
    Process,
    free_port,
    postgres_database,
    server_env,
    start_server,
    wait_for,
    wait_for_http,
)

PUBLIC_URL = "https://sync.example.com"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatabaseUnderTest]:
    """A database with no tables at all: the CLI is what migrates it."""
    if request.param == "sqlite":
        yield DatabaseUnderTest(url=f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}", backend="sqlite")
        return
    admin_url = os.environ.get(PG_ENV)
    if not admin_url:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test)")
    with postgres_database(admin_url, migrated=False) as db:
        yield db


class CLI:
    def __init__(self, db: DatabaseUnderTest, workdir: Path) -> None:
        self.db = db
        self.workdir = workdir

    def run(self, *args: str, **env: str) -> Completed:
        # In a directory of its own, so no `.env` or `.flexsync-key` of the checkout is read.
        return run_flexsync(
            list(args), env=server_env(self.db, FLEXSYNC_PUBLIC_URL=PUBLIC_URL, **env), cwd=self.workdir
        )

    def json(self, *args: str) -> dict[str, Any]:
        completed = self.run(*args, "--json")
        assert completed.returncode == 0, completed.stderr
        data: dict[str, Any] = json.loads(completed.stdout)
        return data

    def fails(self, *args: str, **env: str) -> str:
        """Runs a command that must fail; returns what it printed on stderr."""
        completed = self.run(*args, **env)
        assert completed.returncode != 0, completed.stdout
        assert completed.stdout == "", "a failed command must print nothing a script could take for a result"
        assert "Traceback" not in completed.stderr, completed.stderr
        return completed.stderr


@pytest.fixture
def cli(empty_database: DatabaseUnderTest, tmp_path: Path) -> CLI:
    return CLI(empty_database, tmp_path)


def customers_answer(base_url: str, key: str) -> httpx.Response:
    return httpx.get(f"{base_url}/v1/customers", headers={"x-api-key": key}, timeout=30)


def test_migrate_brings_an_empty_database_to_head_and_is_repeatable(cli: CLI) -> None:
    for _ in range(2):
        completed = cli.run("migrate")
        assert completed.returncode == 0, completed.stderr
        assert "up to date" in completed.stdout

    async def version(session: AsyncSession) -> str | None:
        return (await session.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()

    head = ScriptDirectory.from_config(alembic_config(cli.db.url)).get_current_head()
    assert cli.db.run(version) == head


def test_bootstrap_is_idempotent_and_each_key_works(cli: CLI, tmp_path: Path) -> None:
    first = cli.json("bootstrap")
    second = cli.json("bootstrap")
    assert set(first) == {"tenant_id", "environment_id", "api_key", "webhook_url"}
    assert (second["tenant_id"], second["environment_id"]) == (first["tenant_id"], first["environment_id"])
    assert second["api_key"] != first["api_key"]
    assert first["webhook_url"] == f"{PUBLIC_URL}/v1/webhooks/stripe/{first['tenant_id']}/{first['environment_id']}"

    server = start_server(cli.db, tmp_path, "--no-worker")
    try:
        created = httpx.post(
            f"{server.base_url}/v1/customers",
            headers={"x-api-key": first["api_key"]},
            json={"external_id": "boot-1", "name": "Bootstrapped"},
            timeout=30,
        )
        assert created.status_code == 201, created.text
        # Both keys belong to the same environment, so the second sees what the first made.
        listed = customers_answer(server.base_url, second["api_key"])
        assert listed.status_code == 200
        assert [c["external_id"] for c in listed.json()["items"]] == ["boot-1"]
    finally:
        server.stop()


def test_tenant_environment_and_api_key_commands(cli: CLI, tmp_path: Path) -> None:
    assert cli.run("migrate").returncode == 0
    assert cli.json("tenant", "create", "Acme", "--id", "t1") == {"tenant_id": "t1"}
    assert cli.json("environment", "create", "--tenant", "t1", "staging", "--id", "e1") == {
        "tenant_id": "t1",
        "environment_id": "e1",
        "webhook_url": f"{PUBLIC_URL}/v1/webhooks/stripe/t1/e1",
    }
    issued = cli.json("api-key", "create", "--tenant", "t1", "--environment", "e1")
    assert (issued["tenant_id"], issued["environment_id"]) == ("t1", "e1")
    assert issued["api_key"].startswith("fsk_")

    human = cli.run("tenant", "create", "Globex")
    assert human.returncode == 0 and "tenant created: tenant_" in human.stdout

    server = start_server(cli.db, tmp_path, "--no-worker")
    try:
        listed = customers_answer(server.base_url, issued["api_key"])
        assert listed.status_code == 200, listed.text
        assert listed.json()["pagination"]["total"] == 0
        created = httpx.post(
            f"{server.base_url}/v1/customers",
            headers={"x-api-key": issued["api_key"]},
            json={"external_id": "acme-1", "name": "Acme Customer"},
            timeout=30,
        ).json()
        assert (created["tenant_id"], created["environment_id"]) == ("t1", "e1")
        assert customers_answer(server.base_url, "fsk_not-a-key").status_code == 401
    finally:
        server.stop()


def test_conflicts_and_unknown_ids_fail_with_a_clear_message(cli: CLI) -> None:
    assert cli.run("migrate").returncode == 0
    cli.json("tenant", "create", "Acme", "--id", "t1")
    cli.json("environment", "create", "--tenant", "t1", "production", "--id", "e1")

    assert "tenant t1 already exists" in cli.fails("tenant", "create", "Acme again", "--id", "t1", "--json")
    assert "tenant nope not found" in cli.fails("environment", "create", "--tenant", "nope", "staging")
    assert "environment e1 already exists" in cli.fails(
        "environment", "create", "--tenant", "t1", "again", "--id", "e1"
    )
    assert "not found" in cli.fails("api-key", "create", "--tenant", "nope", "--environment", "e1")
    assert "not found" in cli.fails("api-key", "create", "--tenant", "t1", "--environment", "nope")
    assert "id must be" in cli.fails("tenant", "create", "Bad", "--id", "has space")
    assert "connection conn_nope not found" in cli.fails("connections", "sync-endpoint", "conn_nope")
    # Names that do not fit their column: the same message on both databases, never the database's own.
    assert "tenant name must be at most 255 characters" in cli.fails("tenant", "create", "T" * 256)
    assert "environment name must be at most 255 characters" in cli.fails(
        "environment", "create", "--tenant", "t1", "E" * 256
    )
    assert "API key name must be at most 255 characters" in cli.fails(
        "api-key", "create", "--tenant", "t1", "--environment", "e1", "--name", "K" * 256
    )
    # A port no socket can have is refused before anything starts (a port of 99999 had the server bind
    # another one).
    assert "65535" in cli.fails("serve", "--port", "99999")


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("FLEXSYNC_LOG_LEVEL", "loud", "'debug', 'info', 'warning' or 'error'"),
        ("FLEXSYNC_LOG_FORMAT", "xml", "'console' or 'json'"),
        ("FLEXSYNC_PORT", "70000", "less than or equal to 65535"),
        ("FLEXSYNC_JOB_LEASE_SECONDS", "0", "greater than or equal to 1"),
        ("FLEXSYNC_JOB_POLL_INTERVAL", "0", "greater than 0"),
        ("FLEXSYNC_JOB_MAX_ATTEMPTS", "0", "greater than or equal to 1"),
        ("FLEXSYNC_STRIPE_RATE_LIMIT_LIVE", "-1", "greater than 0"),
        ("FLEXSYNC_STRIPE_TIMEOUT_SECONDS", "0", "greater than 0"),
        ("FLEXSYNC_WORKER_CONCURRENCY", "0", "greater than or equal to 1"),
        ("FLEXSYNC_DATABASE_MAX_CONNECTIONS", "1", "greater than or equal to 2"),
        ("FLEXSYNC_HTTP_KEEP_ALIVE_SECONDS", "0", "greater than or equal to 1"),
        ("FLEXSYNC_DASHBOARD_IDLE_MINUTES", "0", "greater than or equal to 1"),
        ("FLEXSYNC_DASHBOARD_IDLE_MINUTES", "721", "less than or equal to 720"),
        ("FLEXSYNC_SQLITE_BUSY_TIMEOUT_SECONDS", "0", "greater than 0"),
        ("FLEXSYNC_STRIPE_RETRY_FIRST_SECONDS", "60", "less than or equal to 30"),
        ("FLEXSYNC_WEBHOOK_RETRY_FIRST_SECONDS", "0", "greater than 0"),
        ("FLEXSYNC_WEBHOOK_RETRY_SWEEP_SECONDS", "-1", "greater than 0"),
        ("FLEXSYNC_ENCRYPTION_KEYS", f"{TEST_ENCRYPTION_KEY},not-a-key-s3cret", "key 2 is not a Fernet key"),
        ("FLEXSYNC_DATABASE_URL", "mysql://sync:s3cret@db.example.com/sync", "unsupported database"),
        ("FLEXSYNC_DATABASE_URL", "s3cret nonsense", "not a database URL"),
    ],
)
def test_a_setting_out_of_range_is_one_line_naming_it_never_its_value(
    cli: CLI, variable: str, value: str, problem: str
) -> None:
    # Before, some were taken (a worker with concurrency 0 ran no job; a lease of -1 s let every worker take
    # every job) and others ended in a traceback.
    completed = run_flexsync(["worker"], env=server_env(cli.db, **{variable: value}), cwd=cli.workdir)
    assert completed.returncode == 1
    message = " ".join(completed.stderr.split())  # the terminal's line breaks undone
    assert f"invalid configuration: {variable}: " in message and problem in message, completed.stderr
    assert "Traceback" not in completed.stderr and "s3cret" not in completed.stderr


def test_long_running_commands_refuse_a_database_behind_their_migrations(cli: CLI) -> None:
    # A worker or server on such a database would only log the same error on every tick.
    assert "run `flexsync migrate` first" in cli.fails("worker")
    assert cli.run("migrate").returncode == 0
    head = ScriptDirectory.from_config(alembic_config(cli.db.url)).get_current_head()
    previous = ScriptDirectory.from_config(alembic_config(cli.db.url)).get_revision(head).down_revision
    assert isinstance(previous, str)
    command.downgrade(alembic_config(cli.db.url), previous)
    for args in (["worker"], ["serve", "--no-migrate", "--port", "1"]):
        problem = " ".join(cli.fails(*args).split())
        assert f"schema is at migration {previous}, this flexsync needs {head}: run `flexsync migrate`" in problem


def test_a_damaged_development_key_file_is_named_and_never_replaced(cli: CLI) -> None:
    # Without FLEXSYNC_ENCRYPTION_KEYS the key lives in ./.flexsync-key. A damaged file used to end `serve` and
    # `worker` in a traceback that blamed the variable; replacing it would strand every secret stored under it.
    dev_key = {"FLEXSYNC_ENCRYPTION_KEYS": ""}
    key_file = cli.workdir / ".flexsync-key"
    key_file.write_text("damaged-s3cret\n")
    assert cli.run("migrate").returncode == 0
    commands = (
        ["serve", "--port", "1"],
        ["worker"],
        ["rotate-keys"],
        ["events", "replay", "whevt_unknown"],
        ["reconcile", "--connection", "conn_unknown"],
        ["connections", "sync-endpoint", "conn_unknown"],
    )
    for args in commands:
        problem = " ".join(cli.fails(*args, **dev_key).split())
        assert f"the development key file {key_file.resolve()} does not hold a Fernet key" in problem, args
        assert "s3cret" not in problem
    assert key_file.read_text() == "damaged-s3cret\n"

    key_file.unlink()
    key_file.mkdir()
    assert f"{key_file.resolve()} cannot be used: Is a directory" in " ".join(cli.fails("worker", **dev_key).split())
    key_file.rmdir()

    # With no file, the first command makes the key (readable by its owner only) and the next ones use it.
    assert cli.run("rotate-keys", **dev_key).returncode == 0
    made = key_file.read_text()
    assert len(made.strip()) == 44 and key_file.stat().st_mode & 0o777 == 0o600
    assert cli.run("rotate-keys", **dev_key).returncode == 0
    assert key_file.read_text() == made


def test_a_database_url_without_its_driver_gets_flexsyncs(cli: CLI) -> None:
    # postgresql://... and sqlite:///... as most tools write them: flexsync runs them with its own drivers.
    url = cli.db.url.replace("postgresql+asyncpg://", "postgresql://").replace("sqlite+aiosqlite://", "sqlite://")
    assert "+" not in url.split("://")[0]
    completed = run_flexsync(["migrate"], env=server_env(cli.db, FLEXSYNC_DATABASE_URL=url), cwd=cli.workdir)
    assert completed.returncode == 0, completed.stderr
    assert cli.json("tenant", "create", "Acme")["tenant_id"]


def test_only_the_sha256_of_a_key_is_stored(cli: CLI) -> None:
    boot = cli.json("bootstrap")
    issued = cli.json("api-key", "create", "--tenant", boot["tenant_id"], "--environment", boot["environment_id"])
    keys = [boot["api_key"], issued["api_key"]]

    async def api_key_rows(session: AsyncSession) -> list[dict[str, Any]]:
        result = await session.execute(text("SELECT * FROM api_keys"))
        return [dict(row) for row in result.mappings()]

    rows = cli.db.run(api_key_rows)
    assert len(rows) == 2
    assert {row["key_hash"] for row in rows} == {hashlib.sha256(k.encode()).hexdigest() for k in keys}
    stored = " ".join(str(value) for row in rows for value in row.values())
    for key in keys:
        assert key not in stored
        assert key.removeprefix("fsk_") not in stored


def test_an_unmigrated_database_is_named_not_dumped(cli: CLI) -> None:
    assert "run `flexsync migrate` first" in cli.fails("tenant", "create", "Too early")


class LateDatabase:
    """A port in front of the test's PostgreSQL where nothing listens until `open()`: a database that comes up
    after flexsync (as when both start together) or is away for a while (a restart, a failover)."""

    def __init__(self, db_url: str) -> None:
        target = make_url(db_url)
        self.target = (target.host or "127.0.0.1", target.port or 5432)
        self.port = free_port()
        self.url = target.set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def open(self) -> None:
        async def listen() -> asyncio.Server:
            return await asyncio.start_server(self._forward, "127.0.0.1", self.port)

        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(listen(), self.loop).result(10)

    def close(self) -> None:
        async def shut_down() -> None:
            self.server.close()
            others = asyncio.all_tasks() - {asyncio.current_task()}
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(shut_down(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        self.loop.close()

    async def _forward(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self.target)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass
            finally:
                writer.close()

        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))


def test_serve_and_worker_wait_for_a_database_that_comes_up_after_them(cli: CLI) -> None:
    if cli.db.backend != "postgresql":
        pytest.skip("a SQLite database is a file: there is nothing to wait for")
    assert cli.run("migrate").returncode == 0
    late = LateDatabase(cli.db.url)
    port = free_port()
    started: list[Process] = []
    try:
        for args in (["worker"], ["serve", "--port", str(port), "--no-worker"]):
            log_path = cli.workdir / f"{args[0]}.log"
            with log_path.open("wb") as log_file:
                process = subprocess.Popen(
                    [sys.executable, "-m", "flexsync", *args],
                    cwd=cli.workdir,
                    env=server_env(cli.db, FLEXSYNC_DATABASE_URL=late.url),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            started.append(Process(process, log_path))
        for waiting in started:
            wait_for(lambda p=waiting: "the database cannot be reached yet" in p.log(), what="a retry")  # type: ignore[misc]
            assert waiting.process.poll() is None
        late.open()
        worker, server = started
        wait_for(lambda: "sync worker started" in worker.log(), timeout=30, what="the worker to start")
        wait_for_http(f"http://127.0.0.1:{port}/readyz", process=server.process)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).json()["status"] == "ready"
    finally:
        for process in started:
            process.stop()
        late.close()


def test_a_database_that_refuses_is_not_waited_for_and_one_away_for_good_is_given_up_on(cli: CLI) -> None:
    if cli.db.backend != "postgresql":
        pytest.skip("a SQLite database is a file: there is nothing to wait for")
    missing = make_url(cli.db.url).set(database="flexsync_no_such_database").render_as_string(hide_password=False)
    refused = " ".join(cli.fails("worker", FLEXSYNC_DATABASE_URL=missing).split())
    assert 'database "flexsync_no_such_database" does not exist' in refused and "trying again" not in refused
    away = LateDatabase(cli.db.url)  # never opened
    try:
        given_up = cli.fails("worker", FLEXSYNC_DATABASE_URL=away.url, FLEXSYNC_DATABASE_WAIT_SECONDS="1")
    finally:
        away.close()
    given_up = " ".join(given_up.split())
    assert given_up.count("the database cannot be reached yet; trying again") >= 2
    assert "error: cannot reach the database" in given_up
