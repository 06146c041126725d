"""PostgreSQL: the batch lookup of applying Stripe events is planned for its own keys, every time.

The driver prepares each statement once per connection, and after five executions PostgreSQL may settle on a
generic plan, made without the parameter values. Made while the tables were young, such a plan served the
lookup of customers by external_id from an index over the whole environment, and kept doing so until the
next ANALYZE: every batch of webhooks then took 30-130 ms longer. Here a batch is applied again and again on
one connection, as the webhook path does, on a database whose own setting is to use generic plans always (the
trap at its worst, and a setting the other statements must keep), and PostgreSQL's own counters
(pg_prepared_statements) say how each statement was planned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.connections.settings import effective_settings
from flexsync.db import create_engine, driver_transaction, fetch_rows, session_factory, transaction
from flexsync.ids import new_id
from flexsync.sync import inbound, repository
from flexsync.sync.inbound import ConnectionView, InboundEvent
from tests.support import DatabaseUnderTest, new_tenant, own_database
from tests.webhook_support import add_stripe_connection, stripe_customer, stripe_event

BATCHES = 8
# A prepared statement's text, and how many times PostgreSQL planned it generically and for its values.
Plans = tuple[str, int, int]


def generic_plans_always(db: DatabaseUnderTest) -> None:
    """The database's own setting: every prepared statement gets a generic plan."""
    database = make_url(db.url).database

    async def work(session: AsyncSession) -> None:
        await session.execute(text(f'ALTER DATABASE "{database}" SET plan_cache_mode = force_generic_plan'))

    db.run(work)


def plans_after_rounds(
    db: DatabaseUnderTest, work: Callable[[AsyncSession, int], Awaitable[None]], *, on_driver: bool = False
) -> list[Plans]:
    """Run `work` in BATCHES transactions on one connection, as a long-lived process does; after each, the plan
    caching is the database's own again. Returns PostgreSQL's counters of how each statement was planned.
    `on_driver`: the transactions are held by the driver, as the webhook path's are (db.driver_transaction)."""

    async def scenario() -> list[Plans]:
        engine = create_engine(db.url, max_connections=2)
        try:
            sessions = session_factory(engine)
            for n in range(BATCHES):
                async with driver_transaction(engine) if on_driver else transaction(sessions) as session:
                    await work(session, n)
                    [(mode,)] = await fetch_rows(session, text("SELECT current_setting('plan_cache_mode')"), {})
                    assert mode == "force_generic_plan"
            async with sessions() as session:
                rows = await session.execute(
                    text("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
                )
                return [(row[0], row[1], row[2]) for row in rows]
        finally:
            await engine.dispose()

    return asyncio.run(scenario())


def receiving_connection(db: DatabaseUnderTest) -> ConnectionView:
    tenant = new_tenant(db, base_url="")
    connection_id = add_stripe_connection(db, tenant)
    return ConnectionView(connection_id, tenant.tenant_id, tenant.environment_id, effective_settings({}))


# Both ways the batch path's statements reach PostgreSQL: through the ORM session, and on the driver.
on_either_path = pytest.mark.parametrize("on_driver", [False, True], ids=["session", "driver"])


@on_either_path
def test_the_batch_lookup_gets_a_plan_for_its_keys_and_the_inserts_keep_theirs(tmp_path: Path, on_driver: bool) -> None:
    with own_database("postgresql", tmp_path) as db:
        generic_plans_always(db)
        view = receiving_connection(db)

        async def apply_new_customers(session: AsyncSession, _round: int) -> None:
            events = [
                InboundEvent.from_payload(new_id("whevt"), view.id, stripe_event("customer.created", stripe_customer()))
                for _ in range(3)
            ]
            outcomes = await inbound.apply_batch(session, events, connections={view.id: view})
            assert [o.effect for o in outcomes] == ["created"] * 3

        statements = plans_after_rounds(db, apply_new_customers, on_driver=on_driver)

    lookups = [s for s in statements if "CROSS JOIN LATERAL" in s[0]]
    inserts = [s for s in statements if "json_populate_recordset" in s[0]]
    assert len(lookups) == 1 and len(inserts) == 1, statements
    _, generic, custom = lookups[0]
    assert (generic, custom) == (0, BATCHES)
    # The insert (and the foreign key checks it runs) kept to the database's setting.
    _, generic, custom = inserts[0]
    assert (generic, custom) == (BATCHES, 0)


@on_either_path
def test_batches_for_several_connections_or_with_nothing_to_look_up_leave_plan_caching_as_it_was(
    tmp_path: Path, on_driver: bool
) -> None:
    """The switch to plans for values rides on the lock statement and the switch back on the lookup. A batch
    for two connections has two lookups, both planned for their keys; a batch whose connection does not apply
    Stripe's changes takes the lock but has nothing to look up, and still ends with the database's setting
    (`plans_after_rounds` checks it at the end of every transaction)."""
    with own_database("postgresql", tmp_path) as db:
        generic_plans_always(db)
        first, second = receiving_connection(db), receiving_connection(db)
        inbound_off = replace(receiving_connection(db), settings=effective_settings({"inbound_enabled": False}))

        async def apply_mixed(session: AsyncSession, round_number: int) -> None:
            views = [first, second] if round_number % 2 == 0 else [inbound_off]
            events = [
                InboundEvent.from_payload(new_id("whevt"), view.id, stripe_event("customer.created", stripe_customer()))
                for view in views
            ]
            outcomes = await inbound.apply_batch(session, events, connections={view.id: view for view in views})
            expected = ["applied", "applied"] if round_number % 2 == 0 else ["ignored"]
            assert [o.status for o in outcomes] == expected

        statements = plans_after_rounds(db, apply_mixed, on_driver=on_driver)

    lookups = [(generic, custom) for statement, generic, custom in statements if "CROSS JOIN LATERAL" in statement]
    assert lookups == [(0, BATCHES)], statements  # two lookups in each of half the batches


def test_reconciliation_lookups_get_plans_for_their_keys(tmp_path: Path) -> None:
    """Reconciliation looks up links, linked customers and unfinished jobs by key, page after page, on one
    connection: each of those lookups is planned for its keys too."""
    with own_database("postgresql", tmp_path) as db:
        generic_plans_always(db)
        connection_id = receiving_connection(db).id

        async def look_up_a_page(session: AsyncSession, page: int) -> None:
            keys = [f"cus_{page}_{n}" for n in range(3)]
            assert await repository.links_with_customers(session, connection_id, keys) == []
            assert await repository.linked_customer_ids(session, connection_id, keys) == set()
            assert await repository.customers_with_unfinished_jobs(session, keys, ["create"]) == set()

        statements = plans_after_rounds(db, look_up_a_page)

    lookups = [(generic, custom) for statement, generic, custom in statements if "LATERAL" in statement]
    assert lookups == [(0, BATCHES)] * 3, statements
