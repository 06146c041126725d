"""`flexsync serve --processes N`: several server processes on one port, sharing one PostgreSQL database."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.cli_support import run_flexsync
from tests.support import DatabaseUnderTest, Server, own_database, server_env, start_server, wait_for
from tests.webhook_support import InboundTenant, inbound_tenant, stripe_customer, stripe_event


@pytest.fixture(scope="module")
def postgres_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseUnderTest]:
    with own_database("postgresql", tmp_path_factory.mktemp("processes-db")) as db:
        yield db


@pytest.fixture(scope="module")
def two_processes(postgres_db: DatabaseUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(postgres_db, tmp_path_factory.mktemp("processes-logs"), "--processes", "2", "--no-worker")
    yield running
    running.stop()


@pytest.fixture
def inbound(postgres_db: DatabaseUnderTest, two_processes: Server) -> Iterator[InboundTenant]:
    with inbound_tenant(postgres_db, two_processes.base_url) as tenant:
        yield tenant


def serving_processes(server: Server) -> list[int]:
    """The server's processes that serve requests (uvicorn starts them with multiprocessing's spawn)."""
    pid = server.process.pid
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        candidates = [int(child) for child in children.read().split()]
    serving = []
    for child in candidates:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as cmdline:
                if b"spawn_main" in cmdline.read():
                    serving.append(child)
        except FileNotFoundError:
            continue
    return serving


def wait_for_processes(server: Server, count: int, other_than: frozenset[int] = frozenset()) -> list[int]:
    def settled() -> list[int] | None:
        serving = serving_processes(server)
        return serving if len(serving) == count and not set(serving) & other_than else None

    return wait_for(settled, timeout=30, what=f"{count} serving processes")


def test_two_processes_store_and_apply_every_event_once(inbound: InboundTenant, two_processes: Server) -> None:
    assert len(wait_for_processes(two_processes, 2)) == 2
    customers = [stripe_customer(name=f"Customer {n}", email=f"c{n}@example.com") for n in range(40)]
    events = [stripe_event("customer.created", customer) for customer in customers]
    # Each event three times at once: the copies land in either process, and in the same or different batches.
    deliveries = [event for event in events for _ in range(3)]
    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(inbound.deliver, deliveries))

    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    assert Counter(r.json()["status"] for r in responses) == {"applied": 40, "duplicate": 80}
    for customer in customers:
        assert inbound.customer_for(customer["id"])["name"] == customer["name"]
    stored = inbound.events()
    assert sorted(e["stripe_event_id"] for e in stored) == sorted(e["id"] for e in events)
    assert all(e["status"] == "applied" and e["attempts"] == 1 for e in stored)
    # A scrape shows the whole server's counts, whichever process answers it (each request a new connection).
    for _ in range(6):
        metrics = httpx.get(f"{two_processes.base_url}/metrics", timeout=10).text
        assert 'flexsync_webhook_events_total{outcome="applied"} 40.0' in metrics
        assert 'flexsync_webhook_events_total{outcome="duplicate"} 80.0' in metrics


def test_a_process_that_dies_is_replaced(inbound: InboundTenant, two_processes: Server) -> None:
    first = wait_for_processes(two_processes, 2)
    os.kill(first[0], 9)
    replaced = wait_for_processes(two_processes, 2, other_than=frozenset({first[0]}))

    assert first[1] in replaced
    customer = stripe_customer()
    for _ in range(4):  # new connections: whichever process accepts them answers
        assert inbound.deliver(stripe_event("customer.updated", customer)).status_code == 200
    assert inbound.customer_for(customer["id"])["name"] == customer["name"]


def test_a_dashboard_session_holds_in_every_process(inbound: InboundTenant, two_processes: Server) -> None:
    """Signed in through one process, the session works in the other, and signed out through one it ends in both:
    the cookie's signing secret comes from the encryption keys and the session is a row in the database, nothing
    is the process's own. Every request goes on a new connection, so both processes answer."""
    base = two_processes.base_url
    form = httpx.get(f"{base}/signin", timeout=10)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert csrf is not None
    cookies = dict(form.cookies)
    signed_in = httpx.post(
        f"{base}/signin",
        data={"api_key": inbound.tenant.api_key, "csrf_token": csrf.group(1), "next": "/customers"},
        cookies=cookies,
        timeout=10,
    )
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/customers", signed_in.text
    cookies.update(dict(signed_in.cookies))
    for _ in range(8):
        page = httpx.get(f"{base}/customers", cookies=cookies, timeout=10)
        assert page.status_code == 200 and "Customers" in page.text, page.status_code
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    signed_out = httpx.post(f"{base}/signout", data={"csrf_token": token.group(1)}, cookies=cookies, timeout=10)
    assert signed_out.headers["location"] == "/signin?notice=signed-out"
    for _ in range(8):
        page = httpx.get(f"{base}/customers", cookies=cookies, timeout=10)
        assert page.status_code == 303 and page.headers["location"].startswith("/signin"), page.status_code


def test_more_than_one_process_needs_postgresql(tmp_path: Path) -> None:
    db = DatabaseUnderTest(url=f"sqlite+aiosqlite:///{tmp_path / 'one.db'}", backend="sqlite")
    completed = run_flexsync(["serve", "--processes", "2", "--port", "1"], env=server_env(db), cwd=tmp_path)

    assert completed.returncode == 1
    assert completed.stdout == ""
    assert "--processes above 1 needs PostgreSQL" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "one.db").exists(), "refused before touching the database"
