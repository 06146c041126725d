"""A write whose COMMIT lost its connection (PostgreSQL): it was committed, but flexsync never heard so.

A proxy between `flexsync serve` and PostgreSQL (tests/pg_proxy.py) cuts the connection right after forwarding
the create's COMMIT (the COMMIT of the connection that sent the new customer's external_id). With an
`Idempotency-Key`, the server learns on a fresh connection that the commit happened and answers the real 201;
when the database cannot be reached at all, it answers 503, and the client's retry with the key gets the original
201. Either way: one customer, one sync job, one Stripe customer (a worker pushing to localstripe), and never a
409 against the client's own customer. SQLite has no connection to lose: its commit happens in the process."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.ids import new_id
from flexsync.models import Customer, SyncJob
from tests.pg_proxy import CommitCutter
from tests.support import (
    PG_ENV,
    DatabaseUnderTest,
    LocalStripe,
    Server,
    TenantContext,
    assert_error,
    new_tenant,
    postgres_database,
    start_server,
)
from tests.sync_support import add_connection, start_worker, stripe_customers_for, stripe_sdk, wait_for


@pytest.fixture(scope="module")
def pg() -> Iterator[DatabaseUnderTest]:
    admin_url = os.environ.get(PG_ENV)
    if not admin_url:
        pytest.skip(f"a lost PostgreSQL connection needs {PG_ENV}")
    with postgres_database(admin_url) as db:
        yield db


@pytest.fixture(scope="module")
def cutter(pg: DatabaseUnderTest) -> Iterator[CommitCutter]:
    url = make_url(pg.url)
    proxy = CommitCutter(upstream=(url.host or "127.0.0.1", url.port or 5432)).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def flexsync(
    pg: DatabaseUnderTest,
    cutter: CommitCutter,
    localstripe_server: LocalStripe,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """`serve --no-worker` reaching PostgreSQL through the proxy, and a worker reaching it directly."""
    logs = tmp_path_factory.mktemp("commit-lost")
    through_proxy = DatabaseUnderTest(url=cutter.url(pg.url), backend="postgresql")
    server = start_server(through_proxy, logs, "--no-worker", FLEXSYNC_STRIPE_API_BASE=localstripe_server.base_url)
    worker = start_worker(pg, logs, FLEXSYNC_STRIPE_API_BASE=localstripe_server.base_url)
    yield server
    worker.stop()
    server.stop()


@pytest.fixture
def tenant(pg: DatabaseUnderTest, flexsync: Server) -> TenantContext:
    tenant = new_tenant(pg, flexsync.base_url)
    add_connection(pg, tenant)
    return tenant


def made(pg: DatabaseUnderTest, tenant: TenantContext, external_id: str) -> tuple[int, int]:
    """How many customers with this external_id, and sync jobs for them, the database holds."""

    async def work(session: AsyncSession) -> tuple[int, int]:
        ids = select(Customer.id).where(
            Customer.environment_id == tenant.environment_id, Customer.external_id == external_id
        )
        customers = (await session.execute(select(func.count()).select_from(ids.subquery()))).scalar_one()
        jobs = (await session.execute(select(func.count()).where(SyncJob.customer_id.in_(ids)))).scalar_one()
        return int(customers), int(jobs)

    return pg.run(work)


def one_stripe_customer(localstripe: LocalStripe, customer_id: str) -> None:
    client = stripe_sdk(localstripe.base_url)
    found = wait_for(lambda: stripe_customers_for(client, customer_id), 30, "the worker to push the customer")
    time.sleep(1)  # a second push, if there were one, would have been made by now
    assert len(stripe_customers_for(client, customer_id)) == len(found) == 1


def post_until_answered(api: httpx.Client, body: dict[str, Any], key: str) -> httpx.Response:
    """What a client does: send again, with the same key, while the answer is 503."""
    for _ in range(30):
        response = api.post("/v1/customers", json=body, headers={"Idempotency-Key": key})
        if response.status_code != 503:
            return response
        time.sleep(float(response.headers["retry-after"]))
    raise AssertionError("still 503 after 30 tries")


def test_the_server_learns_that_its_lost_commit_happened(
    pg: DatabaseUnderTest,
    cutter: CommitCutter,
    flexsync: Server,
    tenant: TenantContext,
    localstripe_server: LocalStripe,
) -> None:
    body = {"external_id": new_id("crm"), "name": "Ada Lovelace"}
    cuts = cutter.cuts
    with tenant.client() as api:
        cutter.arm(body["external_id"])
        first = api.post("/v1/customers", json=body, headers={"Idempotency-Key": "lost-1"})
        assert cutter.cuts == cuts + 1  # the connection was cut at COMMIT

        assert first.status_code == 201, first.text
        assert "idempotent-replayed" not in first.headers
        assert "the connection was lost at COMMIT; the write was committed" in flexsync.log()
        retried = post_until_answered(api, body, "lost-1")

    assert retried.status_code == 201 and retried.headers["idempotent-replayed"] == "true"
    assert retried.content == first.content
    assert made(pg, tenant, body["external_id"]) == (1, 1)
    one_stripe_customer(localstripe_server, first.json()["id"])


def test_a_client_retrying_with_its_key_gets_the_original_answer(
    pg: DatabaseUnderTest, cutter: CommitCutter, tenant: TenantContext, localstripe_server: LocalStripe
) -> None:
    body = {"external_id": new_id("crm"), "name": "Grace Hopper"}
    with tenant.client() as api:
        cutter.arm(body["external_id"], then_refuse=True)
        first = api.post("/v1/customers", json=body, headers={"Idempotency-Key": "lost-2"})
        # The database is away: the server cannot learn whether its commit happened, and says so.
        error = assert_error(first, 503, "internal_error")
        assert "same Idempotency-Key" in error["message"]
        assert first.headers["retry-after"]
        # It happened.
        assert made(pg, tenant, body["external_id"]) == (1, 1)

        cutter.reopen()
        retried = post_until_answered(api, body, "lost-2")
        # Without the key, the retry meets the customer its own first try made.
        assert_error(api.post("/v1/customers", json=body), 409, "already_exists")

    assert retried.status_code == 201, retried.text
    assert retried.headers["idempotent-replayed"] == "true"
    customer = retried.json()
    assert (customer["external_id"], customer["name"]) == (body["external_id"], "Grace Hopper")
    assert made(pg, tenant, body["external_id"]) == (1, 1)
    one_stripe_customer(localstripe_server, customer["id"])
