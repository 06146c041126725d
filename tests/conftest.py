"""Fixtures: every API test runs against SQLite and, when FLEXSYNC_TEST_DATABASE_URL is set, PostgreSQL."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.support import (
    SERVER_TIMERS,
    DatabaseUnderTest,
    LocalStripe,
    Server,
    TenantContext,
    new_tenant,
    own_database,
    running_server,
    start_localstripe,
)
from tests.sync_support import StandIn, start_standin

T = TypeVar("T")


class Kept:
    """What a session keeps of each backend (its database, its shared servers) until the session ends, made when
    first asked for, whichever order the tests come in. A parametrized session fixture is set up again each time
    its parameter changes, which under pytest-xdist's scheduling would restart a server for every module; the
    fixtures below only pick the backend's from here."""

    def __init__(self, stack: ExitStack) -> None:
        self.stack = stack
        self.made: dict[tuple[str, str], Any] = {}

    def get(self, what: str, backend: str, make: Callable[[], AbstractContextManager[T]]) -> T:
        if (what, backend) not in self.made:
            self.made[what, backend] = self.stack.enter_context(make())
        kept: T = self.made[what, backend]
        return kept


@pytest.fixture(scope="session")
def kept() -> Iterator[Kept]:
    with ExitStack() as stack:
        yield Kept(stack)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, kept: Kept, tmp_path_factory: pytest.TempPathFactory) -> DatabaseUnderTest:
    """The session's database on each backend, migrated once; tests stay apart by taking fresh tenants."""
    backend: str = request.param
    return kept.get("database", backend, lambda: own_database(backend, tmp_path_factory.mktemp("db")))


@pytest.fixture(scope="session")
def no_stripe() -> Iterator[str]:
    """A Stripe base URL where nothing answers: a loopback port held (bound, never listening) for the session, so
    that no other process takes it. Whatever reaches for Stripe (`verify: true`, a replay) fails at once."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}"


@pytest.fixture(scope="session")
def server(database: DatabaseUnderTest, kept: Kept, no_stripe: str, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """The contract tests' `flexsync serve --no-worker` on `database`, one per backend for the session."""
    return kept.get(
        "server",
        database.backend,
        lambda: running_server(
            database,
            tmp_path_factory.mktemp("logs"),
            "--no-worker",
            FLEXSYNC_STRIPE_API_BASE=no_stripe,
            **SERVER_TIMERS,
        ),
    )


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


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def inbound_db(
    request: pytest.FixtureRequest, kept: Kept, tmp_path_factory: pytest.TempPathFactory
) -> DatabaseUnderTest:
    """The database of the webhook and inbound-sync tests, one per backend for the session: theirs alone, apart from
    the contract tests' (its server's retry sweep re-fetches Stripe customers, which the contract server cannot)."""
    backend: str = request.param
    return kept.get("inbound database", backend, lambda: own_database(backend, tmp_path_factory.mktemp("inbound-db")))


@pytest.fixture(scope="session")
def inbound_server(
    inbound_db: DatabaseUnderTest, kept: Kept, localstripe_server: LocalStripe, tmp_path_factory: pytest.TempPathFactory
) -> Server:
    """`flexsync serve --no-worker` on `inbound_db` that re-fetches Stripe customers from localstripe; each test
    takes a fresh tenant."""
    return kept.get(
        "inbound server",
        inbound_db.backend,
        lambda: running_server(
            inbound_db,
            tmp_path_factory.mktemp("inbound-logs"),
            "--no-worker",
            FLEXSYNC_STRIPE_API_BASE=localstripe_server.base_url,
        ),
    )
