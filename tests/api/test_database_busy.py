"""When the database is busy or away: SQLite's one write lock, and PostgreSQL's connections dropped.

Every unit of work takes the lock when it begins. Reads (API GETs, dashboard pages, the API key check of every
request) must not: while webhook batches and the worker write, a read waiting its turn for the lock took up to
615 ms (BENCHMARKS.md), and one behind a long write failed after the busy timeout. Read sessions begin without
the lock, see the last commit, and cannot write. A write that waits out the busy timeout is answered 503 with
Retry-After, changes nothing, and leaves the client's connection usable; so does a request that meets a
PostgreSQL connection dropped by a restart or a failover."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from flexsync.db import (
    ReadSessionWrite,
    create_engine,
    read_session_factory,
    session_factory,
    temporary_failure,
    transaction,
)
from flexsync.ids import new_id
from flexsync.models import Tenant
from tests.support import DatabaseUnderTest, Server, TenantContext, drop_every_connection, new_tenant, start_server
from tests.webhook_support import add_stripe_connection, sign, stripe_customer, stripe_event


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
        # Each of these would wait for the lock (the busy timeout, SERVER_TIMERS) and then fail, if reads took it.
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
        # Waits the server's busy timeout (SERVER_TIMERS: 2 s; 15 s by default) for the lock, then gives up.
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


IN_USE_METRIC = re.compile(r"^flexsync_db_connections_in_use (\S+)$", re.M)


@dataclass
class PoolUse:
    statuses: list[int] = field(default_factory=list)
    most_backends: int = 0  # the server's connections PostgreSQL saw at once
    most_in_use: float = 0  # the most /metrics reported in use
    in_use_after: float | None = None


def test_a_server_opens_no_more_postgresql_connections_than_it_is_allowed(
    fresh_db: DatabaseUnderTest, tmp_path: Path
) -> None:
    """FLEXSYNC_DATABASE_MAX_CONNECTIONS caps a process's pool, so that many processes sharing one PostgreSQL
    stay within its max_connections: under 80 concurrent requests (API reads and webhook deliveries) a server
    allowed 2 never holds more than 2, answers every request, and /metrics shows its connections in use, at most
    2, back to 0 afterwards; the same load makes a server allowed 8 open more than 2 (so the count would see a
    cap that is not kept), and no more than 8."""
    if fresh_db.backend != "postgresql":
        pytest.skip("PostgreSQL's connections")
    database_name = make_url(fresh_db.url).database

    async def load(server: Server, tenant: TenantContext) -> PoolUse:
        use = PoolUse()
        sampler = create_engine(fresh_db.url, null_pool=True)
        done = asyncio.Event()

        async def count_backends() -> None:
            async with sampler.connect() as connection:
                while not done.is_set():
                    count = await connection.scalar(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = :database "
                            "AND pid <> pg_backend_pid()"
                        ),
                        {"database": database_name},
                    )
                    use.most_backends = max(use.most_backends, int(count or 0))
                    await connection.commit()  # pg_stat_activity is read once per transaction
                    await asyncio.sleep(0.002)

        async def in_use(client: httpx.AsyncClient) -> float:
            found = IN_USE_METRIC.search((await client.get("/metrics")).text)
            assert found is not None
            return float(found[1])

        async def watch_metrics() -> None:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
                while not done.is_set():
                    use.most_in_use = max(use.most_in_use, await in_use(client))

        async def deliver(client: httpx.AsyncClient, n: int) -> int:
            body = json.dumps(stripe_event("customer.created", stripe_customer(f"cus_pool{n}"))).encode()
            url = f"/v1/webhooks/stripe/{tenant.tenant_id}/{tenant.environment_id}"
            return (await client.post(url, content=body, headers={"stripe-signature": sign(body)})).status_code

        async def read(client: httpx.AsyncClient) -> int:
            return (await client.get("/v1/customers", headers={"x-api-key": tenant.api_key})).status_code

        limits = httpx.Limits(max_connections=80)
        try:
            watchers = [asyncio.create_task(count_backends()), asyncio.create_task(watch_metrics())]
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as client:
                for _ in range(3):
                    requests = [deliver(client, next(numbers)) for _ in range(40)] + [read(client) for _ in range(40)]
                    use.statuses += await asyncio.gather(*requests)
                done.set()
                await asyncio.gather(*watchers)
                # Every connection goes back (the retry sweep may hold one for a moment every 2 s: look again).
                for _ in range(50):
                    use.in_use_after = await in_use(client)
                    if use.in_use_after == 0:
                        break
                    await asyncio.sleep(0.1)
        finally:
            await sampler.dispose()
        return use

    numbers = itertools.count()
    results: dict[int, PoolUse] = {}
    # Not the default (40) for the second: the suite's other servers hold connections of the same PostgreSQL,
    # whose max_connections (100) a burst of 40 more could reach.
    for allowed in (2, 8):
        server = start_server(fresh_db, tmp_path, "--no-worker", FLEXSYNC_DATABASE_MAX_CONNECTIONS=str(allowed))
        try:
            tenant = new_tenant(fresh_db, server.base_url)
            add_stripe_connection(fresh_db, tenant)
            results[allowed] = asyncio.run(load(server, tenant))
        finally:
            server.stop()
    two, eight = results[2], results[8]
    assert two.statuses == [200] * 240, two.statuses
    assert 1 <= two.most_backends <= 2, two
    assert 1 <= two.most_in_use <= 2 and two.in_use_after == 0, two
    assert eight.statuses == [200] * 240 and 2 < eight.most_backends <= 8 and eight.in_use_after == 0, eight


def test_waiting_too_long_for_a_pooled_connection_is_a_temporary_failure(fresh_db: DatabaseUnderTest) -> None:
    """All of a process's connections in use for longer than it waits: the request is answered 503 with
    Retry-After (kit.middleware asks temporary_failure), not 500."""
    if fresh_db.backend != "postgresql":
        pytest.skip("PostgreSQL's connection pool")

    async def scenario() -> str | None:
        engine = create_engine(fresh_db.url, max_connections=2, pool_wait_seconds=0.2)
        try:
            async with engine.connect() as first, engine.connect() as second:
                await first.execute(text("SELECT 1"))
                await second.execute(text("SELECT 1"))
                try:
                    async with engine.connect() as third:
                        await third.execute(text("SELECT 1"))
                except Exception as exc:
                    return temporary_failure(exc)
                return "a third connection was opened"
        finally:
            await engine.dispose()

    message = asyncio.run(scenario())
    assert message is not None and "FLEXSYNC_DATABASE_MAX_CONNECTIONS" in message, message
