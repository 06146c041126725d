"""The dashboard in a real browser: Playwright driving the system Chromium against a running flexsync on SQLite.

Screenshots of each page are written to docs/screenshots/ when FLEXSYNC_SCREENSHOTS=1 (off in CI, so a test run
never rewrites tracked files).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.tenancy import service as tenancy
from tests.dashboard_support import (
    CHROMIUM,
    CHROMIUM_MISSING,
    launched_chromium,
    outside_playwright,
    sign_in,
    signed_in,
)
from tests.support import (
    DatabaseUnderTest,
    LocalStripe,
    Server,
    TenantContext,
    new_tenant,
    sqlite_database,
    start_server,
)
from tests.webhook_support import sign, stripe_event

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

if not CHROMIUM.exists():
    pytest.skip(CHROMIUM_MISSING, allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the dashboard tests need the playwright package")
Browser = sync_api.Browser
Page = sync_api.Page
expect = sync_api.expect


def fresh_tenant(db: DatabaseUnderTest, server: Server) -> TenantContext:
    return outside_playwright(lambda: new_tenant(db, server.base_url))


@pytest.fixture(scope="module")
def dashboard_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseUnderTest]:
    with sqlite_database(tmp_path_factory.mktemp("dashboard-db")) as db:
        yield db


@pytest.fixture(scope="module")
def dashboard(
    dashboard_db: DatabaseUnderTest, module_localstripe: LocalStripe, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    running = start_server(
        dashboard_db,
        tmp_path_factory.mktemp("dashboard-logs"),
        FLEXSYNC_STRIPE_API_BASE=module_localstripe.base_url,
        FLEXSYNC_JOB_POLL_INTERVAL="0.2",
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser(dashboard: Server) -> Iterator[Browser]:
    with launched_chromium() as launched:
        yield launched


@pytest.fixture
def tenant(dashboard_db: DatabaseUnderTest, dashboard: Server) -> TenantContext:
    return fresh_tenant(dashboard_db, dashboard)


@pytest.fixture
def page(browser: Browser, dashboard: Server) -> Iterator[Page]:
    context = browser.new_context(base_url=dashboard.base_url, viewport={"width": 1280, "height": 860})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=dashboard.base_url)
    context.set_default_timeout(10_000)
    opened = context.new_page()
    yield opened
    context.close()


def screenshot(page: Page, name: str) -> None:
    if os.environ.get("FLEXSYNC_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def reload_until(page: Page, check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """The pages do not refresh themselves: reload until the worker's or the webhook's result shows."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)
        page.reload()


def create_via_api(tenant: TenantContext, **fields: Any) -> dict[str, Any]:
    with tenant.client() as api:
        response = api.post("/v1/customers", json=fields)
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body


def test_sign_in_with_an_api_key_and_out_again(page: Page, tenant: TenantContext) -> None:
    page.goto("/customers")
    expect(page).to_have_url(re.compile(r"/signin\?next=/customers$"))
    screenshot(page, "sign-in")

    page.get_by_label("API key").fill("fsk_not-a-real-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("That API key is not valid, or it has been revoked.")

    page.get_by_label("API key").fill(tenant.api_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Customers")
    expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Customers")).to_have_attribute(
        "aria-current", "page"
    )

    cookie = next(c for c in page.context.cookies() if c["name"] == "flexsync_session")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"
    assert tenant.api_key not in cookie["value"]
    assert tenant.api_key[4:] not in cookie["value"]

    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("You are signed out.")
    page.goto("/customers")
    expect(page).to_have_url(re.compile(r"/signin"))


def test_create_search_edit_and_archive_a_customer(page: Page, tenant: TenantContext) -> None:
    create_via_api(tenant, external_id="crm-existing", name="Existing Ltd")
    sign_in(page, tenant.api_key)
    page.get_by_role("link", name="New customer").click()

    page.get_by_label("External id").fill("crm-existing")
    page.get_by_label("Email").fill("not-an-email")
    page.get_by_label("Country").fill("XX")
    page.get_by_role("button", name="Create customer").click()
    # The API's own messages, next to the fields they concern.
    expect(page.locator("#f-name-error")).to_have_text("String should have at least 1 character")
    expect(page.locator("#f-email-error")).to_contain_text("not a valid email address")
    expect(page.locator("#f-address_country-error")).to_have_text(
        "must be an ISO 3166-1 alpha-2 country code, like US or DE"
    )
    expect(page.get_by_label("Email")).to_have_attribute("aria-invalid", "true")
    screenshot(page, "customer-form-errors")

    page.get_by_role("textbox", name="Name", exact=True).fill("Ada Lovelace")
    page.get_by_label("Email").fill("ada@example.com")
    page.get_by_label("Country").fill("gb")
    page.get_by_label("Metadata").fill("plan=pro")
    page.get_by_role("button", name="Create customer").click()
    expect(page.locator("#f-external_id-error")).to_have_text("already exists")

    page.get_by_label("External id").fill("crm-ada")
    page.get_by_role("button", name="Create customer").click()
    expect(page.get_by_role("status")).to_have_text("Customer created.")
    expect(page.get_by_role("heading", level=1)).to_have_text("Ada Lovelace")
    details = page.get_by_role("region", name="Details")
    expect(details).to_contain_text("GB")
    expect(details).to_contain_text("plan = pro")
    expect(page.get_by_role("region", name="Stripe")).to_contain_text("not linked")

    page.get_by_role("link", name="Customers", exact=True).first.click()
    page.get_by_label("Search").fill("ADA@EXAMPLE")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Ada Lovelace")
    expect(rows.first).to_contain_text("not linked")
    page.get_by_label("Search").fill("nobody-matches")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("No customers match your search.")).to_be_visible()

    page.goto("/customers")
    page.get_by_role("link", name="Ada Lovelace").click()
    page.get_by_role("link", name="Edit").click()
    page.get_by_role("textbox", name="Name", exact=True).fill("Ada King")
    page.get_by_label("City").fill("London")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("status")).to_have_text("Customer saved.")
    expect(page.get_by_role("heading", level=1)).to_have_text("Ada King")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Archive").click()
    expect(page.get_by_role("status")).to_have_text("Customer archived.")
    expect(page.get_by_role("link", name="Edit")).to_have_count(0)

    with tenant.client() as api:
        archived = api.get("/v1/customers/external/crm-ada")
        assert archived.status_code == 404
        listed = api.get("/v1/customers", params={"status": "archived"}).json()["items"]
        assert [(c["name"], c["address_city"], c["metadata"]) for c in listed] == [
            ("Ada King", "London", {"plan": "pro"})
        ]


def test_customer_list_pages_through_results(page: Page, tenant: TenantContext) -> None:
    for i in range(27):
        create_via_api(tenant, external_id=f"bulk-{i:02d}", name=f"Bulk {i:02d}")
    create_via_api(tenant, external_id="other", name="Someone Else")
    sign_in(page, tenant.api_key)
    expect(page.get_by_text("28 customers")).to_be_visible()
    page.get_by_label("Search").fill("bulk")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("27 customers matching “bulk”")).to_be_visible()
    expect(page.locator("tbody tr")).to_have_count(25)
    page.get_by_role("link", name="Next").click()
    expect(page.get_by_text("Page 2 of 2")).to_be_visible()
    expect(page.get_by_label("Search")).to_have_value("bulk")
    expect(page.locator("tbody tr")).to_have_count(2)
    expect(page.locator("tbody")).to_contain_text("Bulk 00")


def test_a_form_without_the_csrf_token_is_refused(page: Page, tenant: TenantContext) -> None:
    sign_in(page, tenant.api_key)
    page.goto("/customers/new")
    page.get_by_label("External id").fill("csrf-1")
    page.get_by_role("textbox", name="Name", exact=True).fill("Forged")
    page.locator("#main input[name=csrf_token]").evaluate("input => input.remove()")
    page.get_by_role("button", name="Create customer").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Not allowed")
    screenshot(page, "csrf-refused")

    # The same with a token from another session, straight over HTTP with this session's cookie.
    forged = page.request.post(
        "/customers/new", form={"external_id": "csrf-2", "name": "Forged", "csrf_token": "x" * 43}
    )
    assert forged.status == 403
    with tenant.client() as api:
        assert api.get("/v1/customers", params={"status": "all"}).json()["pagination"]["total"] == 0


def test_a_revoked_keys_session_stops_working(
    page: Page, tenant: TenantContext, dashboard_db: DatabaseUnderTest
) -> None:
    sign_in(page, tenant.api_key)

    async def revoke(session: AsyncSession) -> None:
        scope = await tenancy.resolve_api_key(session, tenant.api_key)
        assert scope is not None
        await tenancy.revoke_api_key(session, scope.api_key_id)

    outside_playwright(lambda: dashboard_db.run(revoke))
    page.reload()
    expect(page).to_have_url(re.compile(r"/signin"))
    expect(page.get_by_role("status")).to_contain_text("revoked")


def test_a_live_connection_with_a_plain_http_webhook_url_is_warned_about(
    dashboard: Server, tenant: TenantContext
) -> None:
    # The dashboard server's public URL is http://127.0.0.1:PORT: fine for test mode, refused by Stripe for live.
    with signed_in(dashboard.base_url, tenant.api_key) as client, tenant.client() as api:
        keys = {"secret_key": "sk_test_httpwarn", "publishable_key": "pk_test_httpwarn"}
        connection = api.post("/v1/connections", json={"name": "Stripe", **keys})
        assert connection.status_code == 201, connection.text
        assert "webhook-url-not-https" not in client.get("/settings/integrations").text
        api.delete(f"/v1/connections/{connection.json()['id']}")

        live = {"secret_key": "sk_live_httpwarn", "publishable_key": "pk_live_httpwarn"}
        assert api.post("/v1/connections", json={"name": "Stripe", **live}).status_code == 201
        page = client.get("/settings/integrations").text
        assert 'id="webhook-url-not-https"' in page
        assert "Stripe sends live-mode events only to HTTPS endpoints" in page


def test_page_numbers_past_every_list(dashboard: Server, tenant: TenantContext) -> None:
    with signed_in(dashboard.base_url, tenant.api_key) as client:
        for path in ("/customers", "/sync-jobs", "/webhook-events", "/reconciliation"):
            assert client.get(path, params={"page": 1_000_000_000}).status_code == 200, path  # an empty page
            # A page whose rows would start beyond what a database can skip: refused, not a server error.
            assert client.get(path, params={"page": 10**18}).status_code == 400, path


def test_a_tampered_session_cookie_is_not_accepted(dashboard: Server, tenant: TenantContext) -> None:
    with signed_in(dashboard.base_url, tenant.api_key) as client:
        assert client.get("/customers").status_code == 200
        session_id, signature = client.cookies["flexsync_session"].split(".")
        client.cookies.set("flexsync_session", f"{session_id[:-1]}{'A' if session_id[-1] != 'A' else 'B'}.{signature}")
        assert client.get("/customers").headers["location"].startswith("/signin")


def test_pages_cannot_be_framed_or_cached(dashboard: Server) -> None:
    headers = httpx.get(f"{dashboard.base_url}/signin").headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"


def test_the_session_cookie_is_secure_behind_an_https_proxy(dashboard: Server) -> None:
    plain = httpx.get(f"{dashboard.base_url}/signin").headers["set-cookie"]
    behind_tls = httpx.get(f"{dashboard.base_url}/signin", headers={"x-forwarded-proto": "https"}).headers["set-cookie"]
    assert "httponly" in plain.lower() and "samesite=lax" in plain.lower()
    assert "secure" not in plain.lower()
    assert "secure" in behind_tls.lower().split("; ")


SECRET_KEY = "sk_test_dashboardSecret0001"
WEBHOOK_SECRET = "whsec_dashboardSigning0001"
# localstripe cannot forget a webhook, so every test re-registers this one id (see stop_webhooks).
LOCALSTRIPE_WEBHOOK_ID = "flexsync-dashboard"


@pytest.fixture
def in_stripe(module_localstripe: LocalStripe) -> Iterator[stripe.StripeClient]:
    """The test's Stripe account, for what a user does in Stripe's own dashboard."""
    yield stripe.StripeClient(SECRET_KEY, base_addresses={"api": module_localstripe.base_url})
    stop_webhooks(module_localstripe)


def stop_webhooks(module_localstripe: LocalStripe) -> None:
    """Point the test's webhook at an event type that never happens, so later tests get no stray deliveries."""
    module_localstripe.register_webhook(LOCALSTRIPE_WEBHOOK_ID, "http://127.0.0.1:9/", WEBHOOK_SECRET, ["none"])


def nav(page: Page, name: str) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name=name).click()


def add_connection(page: Page) -> None:
    nav(page, "Settings > Integrations")
    page.get_by_label("Connection name").fill("Production Stripe")
    page.get_by_label("Stripe secret key").fill(SECRET_KEY)
    page.get_by_label("Stripe publishable key").fill("pk_test_dashboardPublic0001")
    page.get_by_label("Webhook signing secret").fill(WEBHOOK_SECRET)
    page.get_by_role("button", name="Add Stripe connection").click()
    expect(page.get_by_role("status").first).to_have_text("Stripe connection added.")


def test_the_setup_guide_in_a_browser(
    page: Page, tenant: TenantContext, module_localstripe: LocalStripe, in_stripe: stripe.StripeClient
) -> None:
    """The seed document's steps: add the Stripe connection, give Stripe the webhook URL, check both directions."""
    sign_in(page, tenant.api_key)
    add_connection(page)
    stripe_card = page.get_by_role("region", name="Stripe: Production Stripe")
    expect(stripe_card).to_contain_text("active")
    expect(stripe_card).to_contain_text("••••••••0001")
    assert SECRET_KEY not in page.content() and WEBHOOK_SECRET not in page.content()

    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#copy-status")).to_have_text("Copied to the clipboard.")
    webhook_url = page.evaluate("navigator.clipboard.readText()")
    assert webhook_url == f"{tenant.base_url}/v1/webhooks/stripe/{tenant.tenant_id}/{tenant.environment_id}"
    for event in ("customer.created", "customer.updated", "customer.deleted"):
        expect(page.get_by_role("region", name="Webhook endpoint")).to_contain_text(event)
    module_localstripe.register_webhook(LOCALSTRIPE_WEBHOOK_ID, webhook_url, WEBHOOK_SECRET)

    # Step 3.1-3.2: a customer created in Stripe appears in the customer list.
    from_stripe = in_stripe.v1.customers.create({"name": "Katherine Johnson", "email": "katherine@example.com"})
    nav(page, "Webhook deliveries")
    delivery = page.locator("tbody tr", has_text=from_stripe.id)
    reload_until(page, lambda: "applied" in delivery.first.inner_text() if delivery.count() else False, "the delivery")
    expect(delivery.first).to_contain_text("customer.created")
    expect(delivery.first).to_contain_text("Katherine Johnson")

    delivery.first.get_by_role("link", name="customer.created").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("customer.created")
    expect(page.get_by_role("region", name="Delivery")).to_contain_text(from_stripe.id)
    expect(page.locator("pre.payload")).to_contain_text('"name": "Katherine Johnson"')
    page.get_by_role("button", name="Replay").click()
    expect(page.get_by_role("status")).to_have_text("Webhook event replayed.")
    expect(page.get_by_role("region", name="Delivery")).to_contain_text("applied")
    expect(page.get_by_role("region", name="Delivery").locator("dt:text-is('Attempts') + dd")).to_have_text("2")
    screenshot(page, "webhook-event")

    page.get_by_role("region", name="Delivery").get_by_role("link", name="Katherine Johnson").click()
    stripe_region = page.get_by_role("region", name="Stripe")
    expect(stripe_region.locator(".badge")).to_have_text("linked")
    expect(stripe_region.get_by_role("link", name=re.compile(from_stripe.id))).to_have_attribute(
        "href", f"https://dashboard.stripe.com/test/customers/{from_stripe.id}"
    )
    events = page.get_by_role("region", name="Webhook events")
    expect(events).to_contain_text("customer.created")

    # Step 3.3: a customer created here appears in Stripe.
    nav(page, "Customers")
    page.get_by_role("link", name="New customer").click()
    page.get_by_label("External id").fill("crm-grace")
    page.get_by_role("textbox", name="Name", exact=True).fill("Grace Hopper")
    page.get_by_label("Email").fill("grace@example.com")
    page.get_by_label("Country").fill("US")
    page.get_by_role("button", name="Create customer").click()
    expect(page.get_by_role("status")).to_have_text("Customer created.")
    reload_until(page, lambda: stripe_region.locator(".badge").inner_text() == "linked", "Grace to be linked")
    link = stripe_region.get_by_role("link", name=re.compile(r"^cus_"))
    stripe_id = link.inner_text().split()[0]
    expect(link).to_have_attribute("href", f"https://dashboard.stripe.com/test/customers/{stripe_id}")
    expect(page.get_by_role("region", name="Details")).to_contain_text(f"stripe_customer_id = {stripe_id}")
    created = in_stripe.v1.customers.retrieve(stripe_id)
    assert (created.name, created.email, created.address.country) == ("Grace Hopper", "grace@example.com", "US")

    page.get_by_role("button", name="Sync to Stripe").click()
    expect(page.get_by_role("status")).to_have_text("Sync to Stripe queued.")
    jobs = page.get_by_role("region", name="Sync jobs")
    reload_until(
        page,
        lambda: jobs.locator("tbody tr").count() == 2 and "succeeded" in jobs.locator("tbody tr").first.inner_text(),
        "the manual sync to finish",
    )
    expect(jobs.locator("tbody tr").first).to_contain_text("update")
    assert len([c for c in in_stripe.v1.customers.list({"limit": 100}).data if c.email == "grace@example.com"]) == 1
    screenshot(page, "customer")

    nav(page, "Customers")
    for name in ("Grace Hopper", "Katherine Johnson"):
        row = page.locator("tbody tr", has_text=name)
        expect(row.locator(".badge")).to_have_text("linked")
        expect(row.locator("time")).to_have_count(1)
    screenshot(page, "customers")

    # flexsync's own create comes back from Stripe as a webhook too: applied, changing nothing.
    nav(page, "Webhook deliveries")
    echo = page.locator("tbody tr", has_text=stripe_id)
    reload_until(page, lambda: echo.count() > 0 and "applied" in echo.first.inner_text(), "the echo of Grace's create")
    screenshot(page, "webhook-events")

    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("You are signed out.")


def test_test_edit_disable_and_delete_the_stripe_connection(page: Page, tenant: TenantContext) -> None:
    sign_in(page, tenant.api_key, "/settings/integrations")
    expect(page.get_by_role("heading", name="Add integration: Stripe")).to_be_visible()
    page.get_by_label("Stripe publishable key").fill("pk_test_x")
    page.get_by_role("button", name="Add Stripe connection").click()
    expect(page.locator("#f-name-error")).to_have_text("String should have at least 1 character")
    expect(page.locator("#f-secret_key-error")).to_contain_text("must be a Stripe secret or restricted key")
    expect(page.get_by_label("Stripe publishable key")).to_have_value("pk_test_x")
    page.get_by_label("Connection name").fill("Production Stripe")
    page.get_by_label("Stripe secret key").fill("sk_live_wrongMode")
    page.get_by_role("button", name="Add Stripe connection").click()
    expect(page.locator("#f-publishable_key-error")).to_have_text("must be a live-mode key")
    # Secrets are write-only: a refused form does not send them back to the browser.
    assert "sk_live_wrongMode" not in page.content()
    screenshot(page, "integrations-errors")

    add_connection(page)
    page.get_by_role("button", name="Test connection").click()
    expect(page.get_by_role("status").first).to_contain_text("Stripe accepted the secret key")
    screenshot(page, "integrations")

    page.get_by_label("Connection name").fill("Stripe (test)")
    page.get_by_role("switch", name="Match by email").check()
    page.get_by_role("switch", name="Create customers in Stripe").uncheck()
    page.get_by_label("When a customer is deleted in Stripe").select_option("archive")
    page.get_by_role("button", name="Save connection").click()
    expect(page.get_by_role("status").first).to_have_text("Stripe connection saved.")
    expect(page.get_by_role("switch", name="Match by email")).to_be_checked()
    expect(page.get_by_role("switch", name="Create customers in Stripe")).not_to_be_checked()

    page.get_by_role("button", name="Disable").click()
    expect(page.get_by_role("status").first).to_contain_text("disabled")
    with tenant.client() as api:
        (connection,) = api.get("/v1/connections").json()["items"]
    assert connection["name"] == "Stripe (test)"
    assert connection["status"] == "disabled"
    assert connection["secret_key_last4"] == "0001"
    assert connection["webhook_secret_set"] is True
    assert connection["settings"]["email_matching"] is True
    assert connection["settings"]["outbound_enabled"] is False
    assert connection["settings"]["on_stripe_delete"] == "archive"

    page.get_by_role("button", name="Enable").click()
    expect(page.get_by_role("status").first).to_have_text("Stripe connection enabled.")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("heading", name="Add integration: Stripe")).to_be_visible()
    with tenant.client() as api:
        assert api.get("/v1/connections").json()["pagination"]["total"] == 0


def test_a_failed_sync_job_can_be_retried(page: Page, tenant: TenantContext) -> None:
    sign_in(page, tenant.api_key)
    add_connection(page)
    # A link to a Stripe customer that does not exist: Stripe answers 404 and the job fails.
    customer = create_via_api(
        tenant,
        external_id="crm-missing",
        name="Missing Link",
        integration_entity_mapping=[{"provider": "stripe", "id": "cus_doesnotexist"}],
    )
    nav(page, "Sync jobs")
    rows = page.locator("tbody tr")
    reload_until(page, lambda: "failed" in rows.first.inner_text(), "the link job to fail")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("link")
    expect(rows.first).to_contain_text("cus_doesnotexist")
    screenshot(page, "sync-jobs")

    page.get_by_label("Status").select_option("succeeded")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("No sync jobs with status succeeded.")).to_be_visible()
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("button", name=re.compile("^Retry job")).click()
    expect(page.get_by_role("status")).to_have_text("Sync job queued to run now.")
    reload_until(page, lambda: "failed" in rows.first.inner_text(), "the retried job to fail again")

    page.goto(f"/customers/{customer['id']}")
    expect(page.get_by_role("region", name="Stripe").locator(".badge")).to_have_text("failed")
    expect(page.get_by_role("region", name="Stripe")).to_contain_text("cus_doesnotexist")


def test_another_tenants_key_sees_none_of_its_data(
    page: Page, tenant: TenantContext, dashboard_db: DatabaseUnderTest, dashboard: Server
) -> None:
    with tenant.client() as api:
        connection = api.post(
            "/v1/connections",
            json={
                "name": "Theirs",
                "secret_key": SECRET_KEY,
                "publishable_key": "pk_test_theirs",
                "webhook_secret": WEBHOOK_SECRET,
            },
        ).json()
        event = stripe_event("invoice.paid", {"id": "in_theirs", "object": "invoice"})
        payload = json.dumps(event).encode()
        delivered = httpx.post(
            connection["webhook_url"],
            content=payload,
            headers={"Stripe-Signature": sign(payload, WEBHOOK_SECRET), "Content-Type": "application/json"},
        )
        assert delivered.status_code == 200, delivered.text
        (their_event,) = api.get("/v1/webhook-events").json()["items"]
    theirs = create_via_api(tenant, external_id="private-1", name="Private Customer")
    with tenant.client() as api:
        (their_job,) = api.get("/v1/sync-jobs").json()["items"]
        their_run = api.post(f"/v1/connections/{connection['id']}/reconcile", json={"dry_run": True}).json()

    other = fresh_tenant(dashboard_db, dashboard)
    sign_in(page, other.api_key)
    expect(page.get_by_text("No customers yet.")).to_be_visible()
    page.get_by_label("Status").select_option("all")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("No customers yet.")).to_be_visible()
    nav(page, "Webhook deliveries")
    expect(page.get_by_text("0 events")).to_be_visible()
    nav(page, "Sync jobs")
    expect(page.get_by_text("0 jobs")).to_be_visible()
    nav(page, "Reconciliation")
    expect(page.get_by_text("No reconciliation runs yet.")).to_be_visible()
    nav(page, "Settings > Integrations")
    expect(page.get_by_role("heading", name="Add integration: Stripe")).to_be_visible()
    expect(page.get_by_label("Endpoint URL")).to_have_value(re.compile(re.escape(other.environment_id) + "$"))

    for path in (
        f"/customers/{theirs['id']}",
        f"/customers/{theirs['id']}/edit",
        f"/webhook-events/{their_event['id']}",
        f"/reconciliation/{their_run['id']}",
    ):
        response = page.goto(path)
        assert response is not None and response.status == 404, path
        expect(page.get_by_role("heading", level=1)).to_have_text("Not found")
    page.goto("/customers")
    token = page.locator("input[name=csrf_token]").first.get_attribute("value") or ""
    for path in (
        f"/customers/{theirs['id']}/archive",
        f"/customers/{theirs['id']}/sync",
        f"/webhook-events/{their_event['id']}/replay",
        f"/sync-jobs/{their_job['id']}/retry",
        f"/settings/integrations/{connection['id']}/delete",
    ):
        assert page.request.post(path, form={"csrf_token": token}).status == 404, path
    with tenant.client() as api:
        assert api.get(f"/v1/customers/{theirs['id']}").json()["status"] == "published"
        assert api.get(f"/v1/connections/{connection['id']}").status_code == 200


def test_reconcile_an_existing_stripe_account_dry_run_first(
    page: Page, tenant: TenantContext, module_localstripe: LocalStripe, in_stripe: stripe.StripeClient
) -> None:
    module_localstripe.wipe()
    for name in ("Alan Turing", "Barbara Liskov"):
        in_stripe.v1.customers.create({"name": name, "email": f"{name.split()[0].lower()}@example.com"})
    # Made before there is a connection, so nothing has pushed it to Stripe yet.
    create_via_api(tenant, external_id="crm-edsger", name="Edsger Dijkstra")
    sign_in(page, tenant.api_key)
    nav(page, "Reconciliation")
    expect(page.get_by_text("Reconciliation needs a Stripe connection")).to_be_visible()
    add_connection(page)

    nav(page, "Reconciliation")
    expect(page.get_by_role("switch", name="Dry run")).to_be_checked()
    page.get_by_role("button", name="Start reconciliation").click()
    expect(page.get_by_role("status").first).to_contain_text("Reconciliation started")
    progress = page.get_by_role("region", name="Progress")
    # The page follows the run by itself (no reload here).
    expect(progress.locator(".badge")).to_have_text("succeeded", timeout=30_000)
    report = page.get_by_role("region", name=re.compile("^Report"))
    expect(report.locator("dt:text-is('Imported') + dd")).to_have_text("2")
    expect(report.locator("dt:text-is('Pushed') + dd")).to_have_text("1")
    with tenant.client() as api:
        assert api.get("/v1/customers").json()["pagination"]["total"] == 1

    nav(page, "Reconciliation")
    page.get_by_role("switch", name="Dry run").uncheck()
    page.get_by_role("radio", name=re.compile("^From Stripe")).check()
    page.get_by_role("button", name="Start reconciliation").click()
    expect(progress.locator(".badge")).to_have_text("succeeded", timeout=30_000)
    expect(report.locator("dt:text-is('Imported') + dd")).to_have_text("2")
    expect(report.locator("dt:text-is('Pushed') + dd")).to_have_text("0")
    screenshot(page, "reconciliation")

    nav(page, "Reconciliation")
    runs = page.locator("tbody tr")
    expect(runs).to_have_count(2)
    expect(runs.first).to_contain_text("from-stripe")
    expect(runs.nth(1)).to_contain_text("Dry run")
    nav(page, "Customers")
    for name in ("Alan Turing", "Barbara Liskov"):
        expect(page.locator("tbody tr", has_text=name).locator(".badge")).to_have_text("linked")
    expect(page.locator("tbody tr", has_text="Edsger Dijkstra").locator(".badge")).to_have_text("not linked")
