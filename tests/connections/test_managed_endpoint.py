"""The managed Stripe webhook endpoint (`manage_webhook_endpoint`), end to end on SQLite and PostgreSQL: a real
`flexsync serve` (with its worker), the official stripe SDK, localstripe delivering real signed events.

localstripe has no webhook endpoints API, so Stripe's side is the stand-in (tests/stripe_standin.py with
tests/standin_webhook_endpoints.py): it serves `/v1/webhook_endpoints` and registers each endpoint with
localstripe's own webhook configuration, so what arrives is signed with the secret flexsync captured from the
create; it also words Stripe's refusals (the 16-endpoint limit, https in live mode, a key without permission).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe

from tests.support import (
    DatabaseUnderTest,
    Server,
    TenantContext,
    assert_error,
    new_tenant,
    server_env,
    start_server,
    wait_for,
)
from tests.sync_support import REPO, StandIn

CUSTOMER_EVENTS = ["customer.created", "customer.deleted", "customer.updated"]
TEST_KEYS = {"secret_key": "sk_test_managedendpoint", "publishable_key": "pk_test_managedendpoint"}


@pytest.fixture(scope="module")
def endpoint_server(
    module_db: DatabaseUnderTest, standin: StandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """flexsync with its worker, talking to the stand-in; the endpoint status check runs every second."""
    running = start_server(
        module_db,
        tmp_path_factory.mktemp("endpoint-logs"),
        FLEXSYNC_STRIPE_API_BASE=standin.base_url,
        FLEXSYNC_WEBHOOK_ENDPOINT_CHECK_SECONDS="1",
    )
    yield running
    running.stop()


@pytest.fixture
def tenant(module_db: DatabaseUnderTest, endpoint_server: Server, standin: StandIn) -> Iterator[TenantContext]:
    yield new_tenant(module_db, endpoint_server.base_url)
    # Every test's endpoints go: localstripe delivers every event to every endpoint, and the limit is per account.
    httpx.post(f"{standin.base_url}/_standin/webhook_endpoints/clear", timeout=10).raise_for_status()


@pytest.fixture
def api(tenant: TenantContext) -> Iterator[httpx.Client]:
    with tenant.client() as client:
        yield client


@pytest.fixture
def stripe_api(standin: StandIn) -> stripe.StripeClient:
    return stripe.StripeClient(TEST_KEYS["secret_key"], base_addresses={"api": standin.base_url})


def webhook_url(tenant: TenantContext) -> str:
    return f"{tenant.base_url}/v1/webhooks/stripe/{tenant.tenant_id}/{tenant.environment_id}"


def endpoints_at(stripe_api: stripe.StripeClient, url: str) -> list[Any]:
    return [e for e in stripe_api.v1.webhook_endpoints.list({"limit": 100}).data if e.url == url]


def connect(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"name": "Stripe", "provider": "stripe", **TEST_KEYS, "manage_webhook_endpoint": True, **fields}
    response = api.post("/v1/connections", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def wait_imported(api: httpx.Client, stripe_id: str) -> dict[str, Any]:
    """The customer flexsync made from a Stripe customer (its external_id is the Stripe id)."""

    def found() -> dict[str, Any] | None:
        items: list[dict[str, Any]] = api.get("/v1/customers", params={"external_id": stripe_id}).json()["items"]
        return items[0] if items else None

    return wait_for(found, timeout=30, what=f"Stripe customer {stripe_id} in flexsync")


def refused_deliveries(server: Server) -> float:
    """Webhook deliveries flexsync turned away (bad signature, unknown endpoint, ...), from /metrics."""
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    return sum(
        float(m.group(1)) for m in re.finditer(r'flexsync_webhook_events_total\{outcome="rejected_[^"]*"\} (\S+)', text)
    )


def endpoint_gauge(server: Server, connection_id: str) -> float | None:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    match = re.search(rf'flexsync_stripe_webhook_endpoint_enabled\{{connection_id="{connection_id}"\}} (\S+)', text)
    return float(match.group(1)) if match else None


def test_a_managed_endpoint_delivers_stripe_customers_with_no_secret_pasted(
    api: httpx.Client, tenant: TenantContext, stripe_api: stripe.StripeClient
) -> None:
    connection = connect(api)
    endpoint = connection["webhook_endpoint"]
    assert endpoint["id"].startswith("we_") and endpoint["url"] == webhook_url(tenant) == connection["webhook_url"]
    assert (endpoint["status"], endpoint["managed"]) == ("enabled", True)
    assert sorted(endpoint["enabled_events"]) == CUSTOMER_EVENTS
    assert connection["webhook_secret_set"] and connection["webhook_secrets_count"] == 1
    assert "whsec_" not in json.dumps(connection)

    [in_stripe] = endpoints_at(stripe_api, webhook_url(tenant))
    assert in_stripe.id == endpoint["id"] and sorted(in_stripe.enabled_events) == CUSTOMER_EVENTS
    assert in_stripe.metadata.to_dict() == {"flexsync_connection_id": connection["id"]}
    assert connection["id"] in (in_stripe.description or "")

    created = stripe_api.v1.customers.create({"name": "Mary Jackson", "email": "mary@example.com"})
    customer = wait_imported(api, created.id)
    assert customer["name"] == "Mary Jackson" and customer["metadata"]["stripe_customer_id"] == created.id
    assert api.get(f"/v1/connections/{connection['id']}").json()["webhook_endpoint"] == endpoint


def test_two_enables_at_once_make_one_endpoint(
    api: httpx.Client,
    tenant: TenantContext,
    stripe_api: stripe.StripeClient,
    module_db: DatabaseUnderTest,
    standin: StandIn,
) -> None:
    """Two API requests and a `flexsync connections sync-endpoint` process at the same moment: one endpoint."""
    response = api.post("/v1/connections", json={"name": "Stripe", "provider": "stripe", **TEST_KEYS})
    assert response.status_code == 201, response.text
    connection_id = response.json()["id"]
    assert response.json()["webhook_endpoint"] is None
    env = server_env(module_db, FLEXSYNC_PUBLIC_URL=tenant.base_url, FLEXSYNC_STRIPE_API_BASE=standin.base_url)
    start = threading.Barrier(3)

    def put() -> httpx.Response:
        start.wait()
        with tenant.client() as client:
            return client.put(f"/v1/connections/{connection_id}", json={"manage_webhook_endpoint": True})

    def command() -> subprocess.CompletedProcess[str]:
        start.wait()
        return subprocess.run(
            [sys.executable, "-m", "flexsync", "connections", "sync-endpoint", connection_id, "--json"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    with ThreadPoolExecutor(3) as pool:
        puts = [pool.submit(put), pool.submit(put)]
        ran = pool.submit(command)
        answers = [future.result() for future in puts]
        finished = ran.result()
    assert finished.returncode == 0, finished.stderr
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    [in_stripe] = endpoints_at(stripe_api, webhook_url(tenant))
    assert {a.json()["webhook_endpoint"]["id"] for a in answers} == {in_stripe.id}
    assert json.loads(finished.stdout)["id"] == in_stripe.id
    assert api.get(f"/v1/connections/{connection_id}").json()["webhook_secrets_count"] == 1

    created = stripe_api.v1.customers.create({"name": "Annie Easley"})
    wait_imported(api, created.id)


def test_enabling_again_adopts_the_endpoint_and_sets_its_events(
    api: httpx.Client, tenant: TenantContext, stripe_api: stripe.StripeClient
) -> None:
    connection = connect(api)
    endpoint_id = connection["webhook_endpoint"]["id"]
    # Someone narrows the endpoint's events in Stripe's dashboard.
    stripe_api.v1.webhook_endpoints.update(endpoint_id, {"enabled_events": ["customer.created"]})

    again = api.put(f"/v1/connections/{connection['id']}", json={"manage_webhook_endpoint": True})
    assert again.status_code == 200, again.text
    assert again.json()["webhook_endpoint"]["id"] == endpoint_id
    assert sorted(again.json()["webhook_endpoint"]["enabled_events"]) == CUSTOMER_EVENTS
    assert again.json()["webhook_secrets_count"] == 1  # the same secret: nothing new was made
    [in_stripe] = endpoints_at(stripe_api, webhook_url(tenant))
    assert in_stripe.id == endpoint_id and sorted(in_stripe.enabled_events) == CUSTOMER_EVENTS

    created = stripe_api.v1.customers.create({"name": "Christine Darden"})
    wait_imported(api, created.id)


def test_an_endpoint_made_by_hand_is_replaced(
    api: httpx.Client, tenant: TenantContext, stripe_api: stripe.StripeClient
) -> None:
    """Stripe never shows a secret again: flexsync cannot adopt an endpoint it did not make, so it makes its own
    first and deletes the one made by hand once its own secret is stored."""
    by_hand = stripe_api.v1.webhook_endpoints.create({"url": webhook_url(tenant), "enabled_events": ["*"]})
    connection = connect(api)
    endpoint = connection["webhook_endpoint"]
    assert endpoint["id"] != by_hand.id
    assert [e.id for e in endpoints_at(stripe_api, webhook_url(tenant))] == [endpoint["id"]]
    with pytest.raises(stripe.InvalidRequestError):
        stripe_api.v1.webhook_endpoints.retrieve(by_hand.id)

    created = stripe_api.v1.customers.create({"name": "Dorothy Vaughan"})
    wait_imported(api, created.id)


def test_deleting_the_connection_deletes_its_endpoint(
    api: httpx.Client, tenant: TenantContext, stripe_api: stripe.StripeClient
) -> None:
    connection = connect(api)
    deleted = api.delete(f"/v1/connections/{connection['id']}")
    assert deleted.status_code == 204, deleted.text
    assert endpoints_at(stripe_api, webhook_url(tenant)) == []
    # The environment is free, and a new managed connection gets an endpoint of its own.
    again = connect(api)
    assert again["webhook_endpoint"]["id"] != connection["webhook_endpoint"]["id"]


def test_stripes_endpoint_limit_is_a_clear_400_and_saves_nothing(
    api: httpx.Client, tenant: TenantContext, stripe_api: stripe.StripeClient
) -> None:
    others = [
        stripe_api.v1.webhook_endpoints.create(
            {"url": f"https://other-{n}.example.com/hooks", "enabled_events": ["charge.succeeded"]}
        )
        for n in range(16)
    ]
    body = {"name": "Stripe", "provider": "stripe", **TEST_KEYS, "manage_webhook_endpoint": True}
    refused = api.post("/v1/connections", json=body)
    error = assert_error(refused, 400, "validation_error")
    assert error["details"]["cause"] == "endpoint_limit"
    assert "maximum of 16 test webhook endpoints" in error["message"]
    assert api.get("/v1/connections").json()["items"] == []

    stripe_api.v1.webhook_endpoints.delete(others[0].id)
    connection = connect(api)
    assert [e.id for e in endpoints_at(stripe_api, webhook_url(tenant))] == [connection["webhook_endpoint"]["id"]]


def test_a_key_without_the_webhook_permission_is_a_clear_400_and_saves_nothing(
    api: httpx.Client, standin: StandIn
) -> None:
    restricted = "rk_test_nowebhookpermission"
    refuse = f"{standin.base_url}/_standin/webhook_endpoints/keys_without_permission"
    httpx.post(refuse, json={"keys": [restricted]}, timeout=10).raise_for_status()
    body = {"name": "Stripe", "provider": "stripe", **TEST_KEYS, "secret_key": restricted}
    refused = api.post("/v1/connections", json={**body, "manage_webhook_endpoint": True})
    error = assert_error(refused, 400, "validation_error")
    assert error["details"]["cause"] == "key_permission"
    assert "Webhook Endpoints" in error["message"] and "rak_webhook_write" in error["message"]
    assert restricted not in refused.text
    assert api.get("/v1/connections").json()["items"] == []

    # A connection that exists already: the PUT saves nothing either, not even its other fields.
    connection = api.post("/v1/connections", json=body).json()
    refused = api.put(f"/v1/connections/{connection['id']}", json={"manage_webhook_endpoint": True, "name": "New"})
    assert assert_error(refused, 400, "validation_error")["details"]["cause"] == "key_permission"
    after = api.get(f"/v1/connections/{connection['id']}").json()
    assert (after["name"], after["webhook_endpoint"], after["webhook_secret_set"]) == ("Stripe", None, False)

    httpx.post(refuse, json={"keys": []}, timeout=10).raise_for_status()  # the key is given the permission
    fixed = api.put(f"/v1/connections/{connection['id']}", json={"manage_webhook_endpoint": True, "name": "New"})
    assert fixed.status_code == 200, fixed.text
    assert fixed.json()["name"] == "New" and fixed.json()["webhook_endpoint"]["status"] == "enabled"


def test_a_url_stripe_will_not_take_is_a_clear_400_and_saves_nothing(
    api: httpx.Client,
    tenant: TenantContext,
    module_db: DatabaseUnderTest,
    standin: StandIn,
    tmp_path: Path,
) -> None:
    """Live mode needs https: with plain-HTTP webhook URLs a live connection's endpoint is refused; served
    behind an https address (FLEXSYNC_PUBLIC_URL), the same request works."""
    live = {"name": "Stripe", "provider": "stripe", "secret_key": "sk_live_managed", "publishable_key": "pk_live_x"}
    refused = api.post("/v1/connections", json={**live, "manage_webhook_endpoint": True})
    error = assert_error(refused, 400, "validation_error")
    assert error["details"]["cause"] == "url_refused" and "https" in error["message"].lower()
    assert error["details"]["fields"] == {"webhook_url": "url_refused"}
    assert api.get("/v1/connections").json()["items"] == []

    behind_tls = start_server(
        module_db,
        tmp_path,
        "--no-worker",
        FLEXSYNC_STRIPE_API_BASE=standin.base_url,
        FLEXSYNC_PUBLIC_URL="https://flexsync.example.com",
    )
    try:
        with httpx.Client(base_url=behind_tls.base_url, headers={"x-api-key": tenant.api_key}, timeout=30) as other:
            fixed = other.post("/v1/connections", json={**live, "manage_webhook_endpoint": True})
    finally:
        behind_tls.stop()
    assert fixed.status_code == 201, fixed.text
    assert fixed.json()["webhook_endpoint"]["url"].startswith("https://flexsync.example.com/v1/webhooks/stripe/")


def test_a_disabled_endpoint_shows_and_enabling_it_again_works(
    api: httpx.Client, stripe_api: stripe.StripeClient, standin: StandIn, endpoint_server: Server
) -> None:
    connection = connect(api)
    endpoint_id = connection["webhook_endpoint"]["id"]
    assert endpoint_gauge(endpoint_server, connection["id"]) == 1
    # What Stripe does to an endpoint whose deliveries keep failing.
    httpx.post(f"{standin.base_url}/_standin/webhook_endpoints/disable/{endpoint_id}", timeout=10).raise_for_status()

    def shown_disabled() -> dict[str, Any] | None:
        endpoint: dict[str, Any] = api.get(f"/v1/connections/{connection['id']}").json()["webhook_endpoint"]
        return endpoint if endpoint["status"] == "disabled" else None

    wait_for(shown_disabled, timeout=30, what="the status check to see the disabled endpoint")
    assert endpoint_gauge(endpoint_server, connection["id"]) == 0

    enabled = api.put(f"/v1/connections/{connection['id']}", json={"manage_webhook_endpoint": True})
    assert enabled.status_code == 200, enabled.text
    assert enabled.json()["webhook_endpoint"]["id"] == endpoint_id
    assert enabled.json()["webhook_endpoint"]["status"] == "enabled"
    assert stripe_api.v1.webhook_endpoints.retrieve(endpoint_id).status == "enabled"
    assert endpoint_gauge(endpoint_server, connection["id"]) == 1
    created = stripe_api.v1.customers.create({"name": "Katherine Johnson"})
    wait_imported(api, created.id)


def test_a_new_public_url_moves_the_endpoint_with_no_delivery_refused(
    api: httpx.Client,
    tenant: TenantContext,
    stripe_api: stripe.StripeClient,
    module_db: DatabaseUnderTest,
    standin: StandIn,
    endpoint_server: Server,
) -> None:
    """FLEXSYNC_PUBLIC_URL changes from 127.0.0.1 to localhost (the same server either way): `flexsync
    connections sync-endpoint` makes the new endpoint, keeps both secrets verifying, then deletes the old
    endpoint, while Stripe customers keep being created; every one arrives and no delivery is refused."""
    connection = connect(api)
    old = connection["webhook_endpoint"]
    refused_before = refused_deliveries(endpoint_server)
    new_base = tenant.base_url.replace("127.0.0.1", "localhost")
    env = server_env(module_db, FLEXSYNC_PUBLIC_URL=new_base, FLEXSYNC_STRIPE_API_BASE=standin.base_url)
    made: list[str] = []
    stop = threading.Event()

    def keep_creating() -> None:
        while not stop.is_set():
            made.append(stripe_api.v1.customers.create({"name": f"Moving {len(made)}"}).id)
            stop.wait(0.1)

    creator = threading.Thread(target=keep_creating)
    creator.start()
    try:
        # Customers made before, during and after the move, however fast the machine is.
        wait_for(lambda: len(made) >= 10, timeout=60, what="ten Stripe customers before the move")
        moved = subprocess.run(
            [sys.executable, "-m", "flexsync", "connections", "sync-endpoint", connection["id"], "--json"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        after = len(made) + 10
        wait_for(lambda: len(made) >= after, timeout=60, what="ten Stripe customers after the move")
    finally:
        stop.set()
        creator.join()
    assert moved.returncode == 0, moved.stderr
    new = json.loads(moved.stdout)
    assert new["id"] != old["id"] and new["url"] == webhook_url(tenant).replace("127.0.0.1", "localhost")
    assert [e.id for e in endpoints_at(stripe_api, new["url"])] == [new["id"]]
    assert endpoints_at(stripe_api, old["url"]) == []
    shown = api.get(f"/v1/connections/{connection['id']}").json()
    assert shown["webhook_endpoint"]["id"] == new["id"]
    assert shown["webhook_secrets_count"] == 2  # the old secret verifies a while longer: deliveries in flight

    for stripe_id in made:
        wait_imported(api, stripe_id)
    assert refused_deliveries(endpoint_server) == refused_before


def test_an_endpoint_made_for_a_connection_never_saved_is_deleted_by_the_check(
    api: httpx.Client, tenant: TenantContext, stripe_api: stripe.StripeClient
) -> None:
    """A create whose write never committed (the process died after Stripe made the endpoint) leaves an endpoint
    flexsync made at the URL: the periodic check deletes it. One made by hand is left alone."""
    connection = connect(api)
    stray = stripe_api.v1.webhook_endpoints.create(
        {
            "url": webhook_url(tenant),
            "enabled_events": CUSTOMER_EVENTS,
            "metadata": {"flexsync_connection_id": "conn_never_saved"},
        }
    )
    by_hand = stripe_api.v1.webhook_endpoints.create({"url": webhook_url(tenant), "enabled_events": ["*"]})

    def stray_gone() -> bool:
        return stray.id not in {e.id for e in endpoints_at(stripe_api, webhook_url(tenant))}

    wait_for(stray_gone, timeout=30, what="the check to delete the stray endpoint")
    left = {e.id for e in endpoints_at(stripe_api, webhook_url(tenant))}
    assert left == {connection["webhook_endpoint"]["id"], by_hand.id}


def test_manage_webhook_endpoint_and_a_webhook_secret_conflict(api: httpx.Client) -> None:
    body = {"name": "Stripe", "provider": "stripe", **TEST_KEYS, "webhook_secret": "whsec_pasted"}
    refused = api.post("/v1/connections", json={**body, "manage_webhook_endpoint": True})
    assert "manage_webhook_endpoint" in assert_error(refused, 400, "validation_error")["message"]
    connection = api.post("/v1/connections", json=body).json()
    refused = api.put(
        f"/v1/connections/{connection['id']}",
        json={"manage_webhook_endpoint": True, "add_webhook_secret": "whsec_other"},
    )
    assert "manage_webhook_endpoint" in assert_error(refused, 400, "validation_error")["details"]["fields"]


def test_a_secret_pasted_by_hand_takes_over_and_managing_again_replaces_the_endpoint(
    api: httpx.Client, tenant: TenantContext, stripe_api: stripe.StripeClient
) -> None:
    connection = connect(api)
    first = connection["webhook_endpoint"]["id"]
    pasted = api.put(f"/v1/connections/{connection['id']}", json={"webhook_secret": "whsec_pastedbyhand"})
    assert pasted.status_code == 200, pasted.text
    assert pasted.json()["webhook_endpoint"] is None  # its secret is gone: no longer flexsync's endpoint

    again = api.put(f"/v1/connections/{connection['id']}", json={"manage_webhook_endpoint": True})
    assert again.status_code == 200, again.text
    second = again.json()["webhook_endpoint"]["id"]
    assert second != first
    assert [e.id for e in endpoints_at(stripe_api, webhook_url(tenant))] == [second]
    created = stripe_api.v1.customers.create({"name": "Mae Jemison"})
    wait_imported(api, created.id)


def test_stripe_busy_is_retried_and_stripe_down_saves_nothing(
    api: httpx.Client, tenant: TenantContext, stripe_api: stripe.StripeClient, standin: StandIn
) -> None:
    """The stand-in answers 429 and 500 (localstripe never does): a short burst is backed off and retried, the
    create replayed under its Idempotency-Key; a Stripe that stays down is a 400 saying so, and nothing is kept."""
    create = {"action": "status", "method": "POST", "path": "/v1/webhook_endpoints"}
    standin.faults({**create, "status": 500, "count": 10})
    body = {"name": "Stripe", "provider": "stripe", **TEST_KEYS, "manage_webhook_endpoint": True}
    down = api.post("/v1/connections", json=body)
    assert assert_error(down, 400, "validation_error")["details"]["cause"] == "unreachable"
    assert api.get("/v1/connections").json()["items"] == []

    injected = standin.stats()["injected"]
    standin.faults({**create, "status": 429, "count": 2})
    connection = connect(api)
    assert standin.stats()["injected"] == injected + 2
    assert [e.id for e in endpoints_at(stripe_api, webhook_url(tenant))] == [connection["webhook_endpoint"]["id"]]


def test_an_endpoint_deleted_in_stripe_shows_missing_and_is_created_again(
    api: httpx.Client, tenant: TenantContext, stripe_api: stripe.StripeClient, endpoint_server: Server
) -> None:
    connection = connect(api)
    stripe_api.v1.webhook_endpoints.delete(connection["webhook_endpoint"]["id"])

    def shown_missing() -> bool:
        return bool(api.get(f"/v1/connections/{connection['id']}").json()["webhook_endpoint"]["status"] == "missing")

    wait_for(shown_missing, timeout=30, what="the status check to see the endpoint gone")
    assert endpoint_gauge(endpoint_server, connection["id"]) == 0

    again = api.put(f"/v1/connections/{connection['id']}", json={"manage_webhook_endpoint": True})
    assert again.status_code == 200, again.text
    [in_stripe] = endpoints_at(stripe_api, webhook_url(tenant))
    assert again.json()["webhook_endpoint"] == {
        "id": in_stripe.id,
        "url": webhook_url(tenant),
        "status": "enabled",
        "enabled_events": ["customer.created", "customer.updated", "customer.deleted"],
        "managed": True,
    }
    created = stripe_api.v1.customers.create({"name": "Valerie Thomas"})
    wait_imported(api, created.id)


def test_requests_sent_again_with_their_key_set_up_and_delete_the_endpoint_once(
    api: httpx.Client, tenant: TenantContext, stripe_api: stripe.StripeClient
) -> None:
    """A client that retries (its first answer lost) sends the same request with the same Idempotency-Key: it is
    answered what the first attempt answered, and Stripe is not asked again."""
    by_hand = stripe_api.v1.webhook_endpoints.create({"url": webhook_url(tenant), "enabled_events": ["*"]})
    body = {"name": "Stripe", "provider": "stripe", **TEST_KEYS, "manage_webhook_endpoint": True}
    create_key = {"Idempotency-Key": "create-with-endpoint"}
    created = api.post("/v1/connections", json=body, headers=create_key)
    assert created.status_code == 201, created.text
    connection = created.json()
    assert connection["webhook_endpoint"]["status"] == "enabled"
    # The endpoint made by hand is deleted once the connection's write (held for the key's record) committed.
    assert [e.id for e in endpoints_at(stripe_api, webhook_url(tenant))] == [connection["webhook_endpoint"]["id"]]
    assert by_hand.id != connection["webhook_endpoint"]["id"]

    again = api.post("/v1/connections", json=body, headers=create_key)
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == created.content
    assert [c["id"] for c in api.get("/v1/connections").json()["items"]] == [connection["id"]]
    assert [e.id for e in endpoints_at(stripe_api, webhook_url(tenant))] == [connection["webhook_endpoint"]["id"]]

    path = f"/v1/connections/{connection['id']}"
    manage_key = {"Idempotency-Key": "manage-again"}
    managed = [api.put(path, json={"manage_webhook_endpoint": True}, headers=manage_key) for _ in range(2)]
    assert [m.status_code for m in managed] == [200, 200], managed[0].text
    assert managed[1].headers["idempotent-replayed"] == "true" and managed[1].content == managed[0].content
    assert managed[0].json()["webhook_endpoint"]["id"] == connection["webhook_endpoint"]["id"]

    delete_key = {"Idempotency-Key": "delete-it"}
    deleted = [api.delete(path, headers=delete_key) for _ in range(2)]
    assert [d.status_code for d in deleted] == [204, 204]
    assert deleted[1].headers["idempotent-replayed"] == "true"
    assert endpoints_at(stripe_api, webhook_url(tenant)) == []
    assert api.get("/v1/connections").json()["items"] == []


def test_two_creates_at_once_with_one_key_make_one_connection_and_one_endpoint(
    tenant: TenantContext, stripe_api: stripe.StripeClient
) -> None:
    """Both run their Stripe side; one write wins, the other is answered 409 `idempotency_error` (still running)
    or the winner's answer, and the endpoint it made is deleted again."""
    body = {"name": "Stripe", "provider": "stripe", **TEST_KEYS, "manage_webhook_endpoint": True}
    key = {"Idempotency-Key": "create-twice-at-once"}
    barrier = threading.Barrier(2)

    def create(_: int) -> httpx.Response:
        with tenant.client() as client:
            barrier.wait()
            return client.post("/v1/connections", json=body, headers=key)

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(create, range(2)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses in ([201, 201], [201, 409]), [a.text for a in answers]
    winner = next(a for a in answers if a.status_code == 201).json()
    if statuses == [201, 409]:
        assert_error(next(a for a in answers if a.status_code == 409), 409, "idempotency_error")

    with tenant.client() as client:
        retried = client.post("/v1/connections", json=body, headers=key)
        assert retried.status_code == 201 and retried.json() == winner
        assert [c["id"] for c in client.get("/v1/connections").json()["items"]] == [winner["id"]]
    assert [e.id for e in endpoints_at(stripe_api, webhook_url(tenant))] == [winner["webhook_endpoint"]["id"]]
