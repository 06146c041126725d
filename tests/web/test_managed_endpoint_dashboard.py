"""Settings > Integrations and the managed Stripe webhook endpoint, in a real browser (Playwright with the system
Chromium) against a running flexsync on SQLite and PostgreSQL.

Stripe's webhook endpoints API is the stand-in's (tests/stripe_standin.py with tests/standin_webhook_endpoints.py:
localstripe has none), on top of localstripe.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import stripe

from tests.dashboard_support import CHROMIUM, CHROMIUM_MISSING, launched_chromium
from tests.support import DatabaseUnderTest, Server, TenantContext, new_tenant, start_server
from tests.sync_support import StandIn

KEYS = {"secret_key": "sk_test_dashboardendpoint", "publishable_key": "pk_test_dashboardendpoint"}

if not CHROMIUM.exists():
    pytest.skip(CHROMIUM_MISSING, allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the dashboard tests need the playwright package")
Browser = sync_api.Browser
Page = sync_api.Page
expect = sync_api.expect


@pytest.fixture(scope="module")
def dashboard(
    module_db: DatabaseUnderTest, standin: StandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    running = start_server(
        module_db,
        tmp_path_factory.mktemp("endpoint-dashboard-logs"),
        FLEXSYNC_STRIPE_API_BASE=standin.base_url,
        FLEXSYNC_WEBHOOK_ENDPOINT_CHECK_SECONDS="1",
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser(dashboard: Server) -> Iterator[Browser]:
    with launched_chromium() as launched:
        yield launched


@pytest.fixture
def tenant(module_db: DatabaseUnderTest, dashboard: Server, standin: StandIn) -> Iterator[TenantContext]:
    # Playwright's sync API keeps an event loop in this thread: the database work runs in another.
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(lambda: new_tenant(module_db, dashboard.base_url)).result()
    httpx.post(f"{standin.base_url}/_standin/webhook_endpoints/clear", timeout=10).raise_for_status()
    httpx.post(f"{standin.base_url}/_standin/webhook_endpoints/keys_without_permission", json={"keys": []}, timeout=10)


@pytest.fixture
def page(browser: Browser, dashboard: Server, tenant: TenantContext) -> Iterator[Page]:
    context = browser.new_context(base_url=dashboard.base_url)
    context.set_default_timeout(15_000)
    opened = context.new_page()
    opened.goto("/settings/integrations")
    opened.get_by_label("API key").fill(tenant.api_key)
    opened.get_by_role("button", name="Sign in").click()
    expect(opened).to_have_url(re.compile(r"/settings/integrations$"))
    yield opened
    context.close()


@pytest.fixture
def stripe_api(standin: StandIn) -> stripe.StripeClient:
    return stripe.StripeClient(KEYS["secret_key"], base_addresses={"api": standin.base_url})


def fill_connection(page: Page) -> None:
    page.get_by_label("Connection name").fill("Stripe")
    page.get_by_label("Stripe secret key").fill(KEYS["secret_key"])
    page.get_by_label("Stripe publishable key").fill(KEYS["publishable_key"])


def reload_until(page: Page, check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.3)
        page.reload()


def the_connection(tenant: TenantContext) -> dict[str, Any]:
    with tenant.client() as api:
        (connection,) = api.get("/v1/connections").json()["items"]
    return connection  # type: ignore[no-any-return]


def test_add_a_connection_with_its_endpoint_then_re_enable_it_once_stripe_disables_it(
    page: Page, tenant: TenantContext, standin: StandIn, stripe_api: stripe.StripeClient
) -> None:
    fill_connection(page)
    page.get_by_label("Create the endpoint in Stripe for me").check()
    page.get_by_role("button", name="Add Stripe connection").click()
    expect(page.get_by_role("status").first).to_have_text("Stripe connection added.")
    endpoint = the_connection(tenant)["webhook_endpoint"]
    managed = page.locator("#managed-endpoint")
    expect(managed).to_contain_text(endpoint["id"])
    expect(managed).to_contain_text("managed by flexsync")
    expect(managed.locator(".badge")).to_have_text("enabled")
    expect(page.get_by_role("button", name="Re-enable")).to_have_count(0)

    # What Stripe does to an endpoint whose deliveries keep failing; the worker's status check notices.
    httpx.post(f"{standin.base_url}/_standin/webhook_endpoints/disable/{endpoint['id']}", timeout=10)
    reload_until(page, lambda: page.locator("#endpoint-disabled").count() == 1, "the disabled endpoint to show")
    expect(managed.locator(".badge")).to_have_text("disabled")
    # Every page says so while it lasts, not only Settings > Integrations.
    page.goto(page.url.split("/settings")[0] + "/customers")
    expect(page.locator("#delivery-problems")).to_contain_text("Stripe's webhook endpoint for flexsync is disabled")
    page.go_back()

    page.get_by_role("button", name="Re-enable").click()
    expect(page.get_by_role("status").first).to_contain_text("Stripe webhook endpoint ready")
    expect(page.locator("#managed-endpoint .badge")).to_have_text("enabled")
    expect(page.locator("#delivery-problems")).to_have_count(0)
    assert stripe_api.v1.webhook_endpoints.retrieve(endpoint["id"]).status == "enabled"


def test_create_the_endpoint_for_an_existing_connection_and_delete_it_with_the_connection(
    page: Page, tenant: TenantContext, standin: StandIn, stripe_api: stripe.StripeClient
) -> None:
    fill_connection(page)
    page.get_by_label("Webhook signing secret").fill("whsec_pastedbyhand")
    page.get_by_role("button", name="Add Stripe connection").click()
    expect(page.get_by_role("status").first).to_have_text("Stripe connection added.")
    expect(page.locator("#managed-endpoint")).to_have_count(0)

    # Stripe refuses a key without the Webhook Endpoints permission: the page says why, nothing changes.
    refuse = f"{standin.base_url}/_standin/webhook_endpoints/keys_without_permission"
    httpx.post(refuse, json={"keys": [KEYS["secret_key"]]}, timeout=10).raise_for_status()
    page.get_by_role("button", name="Create the endpoint in Stripe for me").click()
    expect(page.locator("#endpoint-error")).to_contain_text("may not manage webhook endpoints")
    assert the_connection(tenant)["webhook_endpoint"] is None

    httpx.post(refuse, json={"keys": []}, timeout=10).raise_for_status()
    page.get_by_role("button", name="Create the endpoint in Stripe for me").click()
    expect(page.get_by_role("status").first).to_contain_text("Stripe webhook endpoint ready")
    connection = the_connection(tenant)
    endpoint_id = connection["webhook_endpoint"]["id"]
    expect(page.locator("#managed-endpoint")).to_contain_text(endpoint_id)
    # The new secret first, the pasted one still verifying while Stripe may deliver with it.
    assert connection["webhook_secrets_count"] == 2

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("heading", name="Add integration: Stripe")).to_be_visible()
    with pytest.raises(stripe.InvalidRequestError):
        stripe_api.v1.webhook_endpoints.retrieve(endpoint_id)
