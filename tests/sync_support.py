"""Helpers for the outbound sync tests: connections, worker processes, the fault-injecting Stripe stand-in."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import stripe

from flexsync.ids import new_id
from tests.support import (
    DatabaseUnderTest,
    Process,
    TenantContext,
    free_port,
    new_tenant,
    server_env,
    store_connection,
    wait_for,
    wait_for_http,
)

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
STRIPE_TEST_KEY = "sk_test_flexsyncoutbound"


@dataclass
class SyncTenant:
    """A fresh tenant with a Stripe connection, and an API client for it."""

    tenant: TenantContext
    connection_id: str
    api: httpx.Client

    def create(self, **fields: Any) -> dict[str, Any]:
        body = {"external_id": new_id("ext"), "name": "Ada Lovelace", **fields}
        response = self.api.post("/v1/customers", json=body)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def sync(self, customer_id: str) -> dict[str, Any]:
        response = self.api.get(f"/v1/customers/{customer_id}/sync")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def jobs(self, **params: Any) -> list[dict[str, Any]]:
        response = self.api.get("/v1/sync-jobs", params={"limit": 1000, **params})
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def wait_linked(self, customer_id: str, timeout: float = 20.0) -> str:
        def linked() -> str | None:
            value: str | None = (
                self.api.get(f"/v1/customers/{customer_id}").json()["metadata"].get("stripe_customer_id")
            )
            return value

        return wait_for(linked, timeout, f"customer {customer_id} to be linked")

    def wait_settled(self, customer_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """Wait until the customer has no pending or running job; returns its sync status."""

        def settled() -> dict[str, Any] | None:
            status = self.sync(customer_id)
            return None if status["pending_jobs"] else status

        return wait_for(settled, timeout, f"customer {customer_id}'s jobs to finish")


def add_connection(
    db: DatabaseUnderTest, tenant: TenantContext, settings: dict[str, Any] | None = None, mode: str = "test"
) -> str:
    """A Stripe connection row for outbound tests, as the connections API would store it (keys encrypted)."""
    return store_connection(
        db,
        tenant,
        name="Test Stripe",
        secret_key=STRIPE_TEST_KEY,
        publishable_key="pk_test_flexsyncoutbound",
        webhook_secrets=["whsec_flexsyncoutbound"],
        settings=settings,
        mode=mode,
    )


@contextmanager
def sync_tenant(db: DatabaseUnderTest, base_url: str, settings: dict[str, Any] | None = None) -> Iterator[SyncTenant]:
    """A fresh tenant whose environment has a Stripe connection with these settings."""
    tenant = new_tenant(db, base_url)
    connection_id = add_connection(db, tenant, settings)
    with tenant.client() as api:
        yield SyncTenant(tenant, connection_id, api)


def stripe_sdk(base_url: str) -> stripe.StripeClient:
    return stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": base_url})


def stripe_customers_for(client: stripe.StripeClient, flexprice_customer_id: str) -> list[Any]:
    """Every live Stripe customer whose metadata names this flexsync customer (localstripe has no search)."""
    found: list[Any] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = client.v1.customers.list(params)  # type: ignore[arg-type]
        found += [c for c in page.data if c.metadata.to_dict().get("flexprice_customer_id") == flexprice_customer_id]
        if not page.has_more:
            return found
        params["starting_after"] = page.data[-1].id


def start_worker(db: DatabaseUnderTest, log_dir: Path, *args: str, **env: str) -> Process:
    """A real `flexsync worker` process. It catches up from Stripe's Events API only when asked (the API, the
    CLI) unless the test sets FLEXSYNC_STRIPE_CATCHUP_INTERVAL_SECONDS (tests/webhooks/test_catch_up.py does): the
    tests of one pytest worker share one localstripe account, and a catch-up of a new connection would import the
    customers an earlier test made a moment before (its cursor starts a little before the connection), as it
    should for a real account."""
    env = {"FLEXSYNC_STRIPE_CATCHUP_INTERVAL_SECONDS": "0", **env}
    log_path = log_dir / f"worker-{free_port()}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "flexsync", "worker", *args],
            env=server_env(db, **env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    worker = Process(process, log_path)
    wait_for(lambda: "sync worker started" in worker.log() or process.poll() is not None, 30, "the worker to start")
    if process.poll() is not None:
        raise RuntimeError(f"flexsync worker exited:\n{worker.log()}")
    return worker


@dataclass
class StandIn:
    """The fault-injecting Stripe stand-in (tests/stripe_standin.py), in front of a localstripe."""

    base_url: str
    process: Process

    def faults(self, *faults: dict[str, Any]) -> None:
        httpx.post(f"{self.base_url}/_standin/faults", json={"faults": list(faults)}, timeout=10).raise_for_status()

    def release(self) -> None:
        httpx.post(f"{self.base_url}/_standin/release", timeout=10).raise_for_status()

    def reset(self) -> None:
        httpx.post(f"{self.base_url}/_standin/reset", timeout=10).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.base_url}/_standin/stats", timeout=10)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def script_events(self, events: list[dict[str, Any]] | None) -> None:
        """Answer GET /v1/events from these events, as Stripe would (None: forward to localstripe again)."""
        httpx.post(f"{self.base_url}/_standin/events", json={"events": events}, timeout=10).raise_for_status()

    def creates_for(self, flexprice_customer_id: str) -> int:
        count: int = self.stats()["creates"].get(flexprice_customer_id, 0)
        return count


def start_standin(upstream: str, log_dir: Path) -> StandIn:
    port = free_port()
    log_path = log_dir / f"standin-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.stripe_standin", "--upstream", upstream, "--port", str(port)],
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base_url}/_standin/stats", process=process)
    except Exception:
        process.kill()
        process.wait(10)
        raise RuntimeError(f"the Stripe stand-in did not start:\n{log_path.read_text(errors='replace')}") from None
    return StandIn(base_url, Process(process, log_path))
