"""PostgreSQL: `db.driver_transaction`, the webhook path's unit of work, whose transaction the asyncpg connection
holds. Statements run through `fetch_rows` go to the driver directly; the ORM joins through a savepoint. Both
must commit together, roll back together, and leave the pooled connection clean for the next user."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from flexsync.db import create_engine, driver_transaction, fetch_rows, session_factory
from flexsync.ids import new_id
from flexsync.models import Tenant
from tests.support import DatabaseUnderTest, own_database

INSERT_TENANT = text("INSERT INTO tenants (id, name, created_at) VALUES (:id, :name, now()) RETURNING id")


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[DatabaseUnderTest]:
    with own_database("postgresql", tmp_path) as db:
        yield db


def on_one_connection(db: DatabaseUnderTest, work: Callable[[AsyncEngine], Awaitable[None]]) -> None:
    async def scenario() -> None:
        engine = create_engine(db.url, max_connections=2)
        try:
            await work(engine)
        finally:
            await engine.dispose()

    asyncio.run(scenario())


async def tenant_names(engine: AsyncEngine) -> list[str]:
    async with session_factory(engine)() as session:
        return sorted((await session.execute(select(Tenant.name))).scalars())


def test_driver_statements_and_orm_changes_commit_together(postgres: DatabaseUnderTest) -> None:
    async def work(engine: AsyncEngine) -> None:
        async with driver_transaction(engine) as session:
            [(inserted,)] = await fetch_rows(session, INSERT_TENANT, {"id": new_id("tenant"), "name": "on the driver"})
            session.add(Tenant(id=new_id("tenant"), name="through the ORM"))
            # The ORM sees what the driver wrote: one transaction.
            found = await session.get(Tenant, inserted)
            assert found is not None and found.name == "on the driver"
        assert await tenant_names(engine) == ["on the driver", "through the ORM"]

    on_one_connection(postgres, work)


def test_an_error_rolls_back_both_and_the_connection_is_clean_afterwards(postgres: DatabaseUnderTest) -> None:
    async def work(engine: AsyncEngine) -> None:
        with pytest.raises(RuntimeError, match="changed my mind"):
            async with driver_transaction(engine) as session:
                await fetch_rows(session, INSERT_TENANT, {"id": new_id("tenant"), "name": "on the driver"})
                session.add(Tenant(id=new_id("tenant"), name="through the ORM"))
                await session.flush()
                raise RuntimeError("changed my mind")
        assert await tenant_names(engine) == []

        # A statement that fails leaves the transaction unusable; the unit rolls back, the connection recovers.
        with pytest.raises(Exception, match="duplicate key"):
            async with driver_transaction(engine) as session:
                same = {"id": "tenant_same", "name": "twice"}
                await fetch_rows(session, INSERT_TENANT, same)
                await fetch_rows(session, INSERT_TENANT, same)
        async with driver_transaction(engine) as session:
            await fetch_rows(session, INSERT_TENANT, {"id": new_id("tenant"), "name": "after"})
        assert await tenant_names(engine) == ["after"]

    on_one_connection(postgres, work)


def test_without_the_driver_fetch_rows_goes_through_the_session(postgres: DatabaseUnderTest) -> None:
    async def work(engine: AsyncEngine) -> None:
        async with session_factory(engine)() as session, session.begin():
            assert await fetch_rows(session, INSERT_TENANT, {"id": "tenant_a", "name": "a"}) == [("tenant_a",)]
            assert await fetch_rows(session, text("SET LOCAL lock_timeout = '1s'"), {}) == []
        assert await tenant_names(engine) == ["a"]

    on_one_connection(postgres, work)


def test_a_unit_interrupted_mid_statement_leaves_nothing_behind(postgres: DatabaseUnderTest) -> None:
    """A request whose client went away cancels the work mid-statement: what the unit wrote is rolled back and
    the pooled connection (the only one here) serves the next unit."""

    async def work(engine: AsyncEngine) -> None:
        async def slow_unit() -> None:
            async with driver_transaction(engine) as session:
                await fetch_rows(session, INSERT_TENANT, {"id": new_id("tenant"), "name": "interrupted"})
                await fetch_rows(session, text("SELECT pg_sleep(5)"), {})

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(slow_unit(), timeout=0.5)
        async with driver_transaction(engine) as session:
            await fetch_rows(session, INSERT_TENANT, {"id": new_id("tenant"), "name": "next"})
        assert await tenant_names(engine) == ["next"]

    on_one_connection(postgres, work)
