"""Fixtures: every API test runs against SQLite and, when FLEXSYNC_TEST_DATABASE_URL is set, PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import (
    DatabaseUnderTest,
    LocalStripe,
    Server,
    TenantContext,
    new_tenant,
    own_database,
    start_localstripe,
    start_server,
)
from tests.sync_support import StandIn, start_standin


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseUnderTest]:
    with own_database(request.param, tmp_path_factory.mktemp("db")) as db:
        yield db


@pytest.fixture(scope="session")
def server(database: DatabaseUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(database, tmp_path_factory.mktemp("logs"), "--no-worker")
    yield running
    running.stop()


@pytest.fixture
def tenant(database: DatabaseUnderTest, server: Server) -> TenantContext:
    return new_tenant(database, server.base_url)


@pytest.fixture
def api(tenant: TenantContext) -> Iterator[httpx.Client]:
    with tenant.client() as client:
        yield client


@pytest.fixture
def anonymous(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Keep one backend's tests together so each session-scoped server starts once.
    items.sort(key=lambda item: "postgresql" in item.nodeid)


@pytest.fixture(scope="session")
def localstripe_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStripe]:
    running = start_localstripe(tmp_path_factory.mktemp("localstripe"))
    yield running
    running.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatabaseUnderTest]:
    """A migrated database of this test's own, on each backend, which the test may take apart."""
    with own_database(request.param, tmp_path) as db:
        yield db


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseUnderTest]:
    """A database of the test module's own, on each backend: no other module's server, worker or retry sweep
    meets its jobs and webhook events."""
    with own_database(request.param, tmp_path_factory.mktemp("module-db")) as db:
        yield db


@pytest.fixture(scope="module")
def module_localstripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStripe]:
    """A localstripe of the test module's own: its Stripe customers are the module's alone."""
    running = start_localstripe(tmp_path_factory.mktemp("localstripe-module"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def standin(module_localstripe: LocalStripe, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    """The fault-injecting stand-in (tests/stripe_standin.py) in front of the module's localstripe."""
    running = start_standin(module_localstripe.base_url, tmp_path_factory.mktemp("standin"))
    yield running
    running.process.stop()


@pytest.fixture(scope="module")
def inbound_server(
    module_db: DatabaseUnderTest, localstripe_server: LocalStripe, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """`flexsync serve --no-worker` that re-fetches Stripe customers from localstripe."""
    running = start_server(
        module_db,
        tmp_path_factory.mktemp("inbound-logs"),
        "--no-worker",
        FLEXSYNC_STRIPE_API_BASE=localstripe_server.base_url,
    )
    yield running
    running.stop()
