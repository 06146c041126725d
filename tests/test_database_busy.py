"""When the database is busy or away: SQLite's one write lock, and PostgreSQL's connections dropped.

Every unit of work takes the lock when it begins. Reads (API GETs, dashboard pages, the API key check of every
request) must not: while webhook batches and the worker write, a read waiting its turn for the lock took up to
615 ms (BENCHMARKS.md), and one behind a long write failed after the busy timeout. Read sessions begin without
the lock, see the last commit, and cannot write. A write that waits out the busy timeout is answered 503 with
Retry-After, changes nothing, and leaves the client's connection usable; so does a request that meets a
PostgreSQL connection dropped by a restart or a failover."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import OperationalError

from flexsync.db import ReadSessionWrite, create_engine, read_session_factory, session_factory, transaction
from flexsync.ids import new_id
from flexsync.models import Tenant
from tests.support import DatabaseUnderTest, drop_every_connection


def sqlite_path(database: DatabaseUnderTest) -> str:
    if database.backend != "sqlite":
        pytest.skip("SQLite's write lock")
    return database.url.removeprefix("sqlite+aiosqlite:///")


@contextmanager
def write_lock_held(path: str) -> Iterator[sqlite3.Connection]:
    """Another process's writer, in the middle of its transaction (rolled back at the end)."""
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        yield writer
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_api_reads_answer_while_another_process_holds_the_write_lock(
    database: DatabaseUnderTest, api: httpx.Client
) -> None:
    path = sqlite_path(database)
    customer = api.post("/v1/customers", json={"external_id": "crm-reads", "name": "Grace Hopper"}).json()

    with write_lock_held(path) as writer:
        writer.execute("UPDATE customers SET name = 'not committed' WHERE id = ?", (customer["id"],))
        # Each of these would wait for the lock (15 s, the busy timeout) and then fail, if reads took it.
        one = api.get(f"/v1/customers/{customer['id']}")
        listed = api.get("/v1/customers", params={"external_id": "crm-reads"})
        events = api.get("/v1/webhook-events")
        jobs = api.get("/v1/sync-jobs")
        # The writer is still in its transaction: nothing above waited for it.
        assert writer.in_transaction

    assert one.status_code == 200, one.text
    assert one.json()["name"] == "Grace Hopper"  # the last commit, not the writer's change in progress
    assert listed.status_code == 200, listed.text
    assert [c["id"] for c in listed.json()["items"]] == [customer["id"]]
    assert events.status_code == 200, events.text
    assert jobs.status_code == 200, jobs.text
    # Writes go on as before once the lock is free.
    renamed = api.put(f"/v1/customers/{customer['id']}", json={"name": "Grace B. Hopper"})
    assert renamed.status_code == 200, renamed.text
    assert api.get(f"/v1/customers/{customer['id']}").json()["name"] == "Grace B. Hopper"


def test_a_write_that_waits_out_the_busy_timeout_is_answered_503_and_changes_nothing(
    database: DatabaseUnderTest, api: httpx.Client
) -> None:
    path = sqlite_path(database)
    with write_lock_held(path):
        # Waits SQLITE_BUSY_TIMEOUT_MS (15 s) for the lock, then gives up.
        refused = api.post("/v1/customers", json={"external_id": "crm-busy", "name": "Katherine Johnson"})

    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "1"
    body = refused.json()
    assert body["code"] == "internal_error"
    assert "busy" in body["message"] and "try again" in body["message"]
    # On the same keep-alive connection (the server used to close it after an unexpected error, and the next
    # request failed with a reset): nothing was created, and trying again works.
    assert api.get("/v1/customers/external/crm-busy").status_code == 404
    created = api.post("/v1/customers", json={"external_id": "crm-busy", "name": "Katherine Johnson"})
    assert created.status_code == 201, created.text
    assert api.get("/v1/customers", params={"external_id": "crm-busy"}).json()["pagination"]["total"] == 1


def test_a_read_session_cannot_write_and_its_connection_writes_again_afterwards(database: DatabaseUnderTest) -> None:
    sqlite_path(database)
    name = f"read-{new_id('x')}"

    async def scenario() -> list[str]:
        engine = create_engine(database.url)
        reads, units = read_session_factory(engine), session_factory(engine)
        try:
            async with reads() as session:
                # On the session's connection, past the session's own refusal: SQLite's query_only refuses it.
                connection = await session.connection()
                with pytest.raises(OperationalError, match="readonly"):
                    await connection.execute(
                        text("INSERT INTO tenants (id, name, created_at) VALUES (:id, :name, CURRENT_TIMESTAMP)"),
                        {"id": new_id("tenant"), "name": name},
                    )
            # The same pooled connection, now in a unit of work: writing works again.
            async with transaction(units) as session:
                session.add(Tenant(id=new_id("tenant"), name=name))
            async with reads() as session:
                return list((await session.execute(select(Tenant.name).where(Tenant.name == name))).scalars())
        finally:
            await engine.dispose()

    assert asyncio.run(scenario()) == [name]


def test_a_write_in_a_read_session_fails_on_either_backend_and_nothing_is_written(database: DatabaseUnderTest) -> None:
    """On PostgreSQL a read session is a plain session, which would roll a stray write back silently when it
    closes; the session itself refuses it, so a write that ends up in a read path fails there too."""
    name = f"stray-{new_id('x')}"
    insert_sql = "INSERT INTO tenants (id, name, created_at) VALUES (:id, :name, CURRENT_TIMESTAMP)"

    async def scenario() -> list[str]:
        engine = create_engine(database.url)
        reads = read_session_factory(engine)
        try:
            async with reads() as session:
                session.add(Tenant(id=new_id("tenant"), name=name))
                with pytest.raises(ReadSessionWrite):
                    await session.flush()
            async with reads() as session:
                with pytest.raises(ReadSessionWrite):
                    await session.execute(update(Tenant).where(Tenant.name == "nobody").values(name=name))
                with pytest.raises(ReadSessionWrite):
                    await session.execute(text(insert_sql), {"id": new_id("tenant"), "name": name})
                with pytest.raises(ReadSessionWrite):
                    await session.execute(
                        text(f"WITH w AS ({insert_sql} RETURNING id) SELECT count(*) FROM w"),  # noqa: S608
                        {"id": new_id("tenant"), "name": name},
                    )
                # Reading still works in the same session.
                assert (await session.execute(select(Tenant.name).where(Tenant.name == name))).all() == []
            async with transaction(session_factory(engine)) as session:
                return list((await session.execute(select(Tenant.name).where(Tenant.name == name))).scalars())
        finally:
            await engine.dispose()

    assert asyncio.run(scenario()) == []


def test_a_request_that_meets_a_dropped_postgresql_connection_answers_503_and_the_next_one_works(
    database: DatabaseUnderTest, api: httpx.Client
) -> None:
    if database.backend != "postgresql":
        pytest.skip("PostgreSQL's connections")
    assert api.get("/v1/customers").status_code == 200  # the server's pool holds a connection now
    assert asyncio.run(drop_every_connection(database.url)) > 0

    failed = api.get("/v1/customers")
    assert failed.status_code == 503, failed.text
    assert failed.headers["retry-after"] == "1"
    assert failed.json()["code"] == "internal_error" and "unreachable" in failed.json()["message"]
    # The same client connection; the server has replaced its pool's dead connections.
    assert api.get("/v1/customers").status_code == 200
