"""Ending dashboard sessions, in a real browser (Playwright, the system Chromium) on each database.

Two browser contexts are two browsers: they share no cookies. Time passing is simulated by moving a session's
stored times back, never by sleeping.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.models import DashboardSession
from flexsync.tenancy import dashboard_sessions
from flexsync.tenancy import service as tenancy
from tests.dashboard_support import (
    CHROMIUM,
    CHROMIUM_MISSING,
    launched_chromium,
    outside_playwright,
    sign_in,
)
from tests.support import DatabaseUnderTest, Server, TenantContext, new_tenant, start_server

if not CHROMIUM.exists():
    pytest.skip(CHROMIUM_MISSING, allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the dashboard tests need the playwright package")
Browser = sync_api.Browser
BrowserContext = sync_api.BrowserContext
Page = sync_api.Page
expect = sync_api.expect

SIGN_IN_PAGE = re.compile(r"/signin\?next=/customers")


@pytest.fixture(scope="module")
def dashboard(module_db: DatabaseUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(module_db, tmp_path_factory.mktemp("signout-logs"), "--no-worker")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser(dashboard: Server) -> Iterator[Browser]:
    with launched_chromium() as launched:
        yield launched


@pytest.fixture
def tenant(module_db: DatabaseUnderTest, dashboard: Server) -> TenantContext:
    return outside_playwright(lambda: new_tenant(module_db, dashboard.base_url))


@pytest.fixture
def open_browser(browser: Browser, dashboard: Server) -> Iterator[Any]:
    """Opens a page in a browser context of its own (a browser of its own, as far as the server can tell)."""
    contexts: list[BrowserContext] = []

    def open_page(**options: Any) -> Page:
        context = browser.new_context(base_url=dashboard.base_url, viewport={"width": 1280, "height": 860}, **options)
        context.set_default_timeout(10_000)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


def session_cookie(page: Page) -> dict[str, Any]:
    return dict(next(c for c in page.context.cookies() if c["name"] == "flexsync_session"))


def expect_signed_out(page: Page, notice: str | None = None) -> None:
    page.goto("/customers")
    expect(page).to_have_url(SIGN_IN_PAGE)
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    expect(page.get_by_role("navigation", name="Main")).to_have_count(0)
    if notice:
        expect(page.get_by_role("status")).to_contain_text(notice)


def test_a_cookie_copied_before_sign_out_opens_nothing_afterwards(open_browser: Any, tenant: TenantContext) -> None:
    page = open_browser()
    sign_in(page, tenant.api_key)
    copied = session_cookie(page)
    # The flags are those of before: HttpOnly, SameSite=Lax, Secure only over HTTPS.
    assert (copied["httpOnly"], copied["sameSite"], copied["secure"]) == (True, "Lax", False)
    assert tenant.api_key[4:] not in copied["value"]

    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("You are signed out.")

    # Another browser (a shared machine's next user, whoever read a proxy log) with the copy gets nothing.
    thief = open_browser()
    thief.context.add_cookies([copied])
    expect_signed_out(thief)


def test_sign_out_everywhere_ends_the_other_browsers_session(open_browser: Any, tenant: TenantContext) -> None:
    laptop, phone = open_browser(), open_browser()
    sign_in(laptop, tenant.api_key)
    sign_in(phone, tenant.api_key, "/sync-jobs")

    laptop.once("dialog", lambda dialog: dialog.accept())
    laptop.get_by_role("button", name="Sign out everywhere").click()
    expect(laptop.get_by_role("status")).to_have_text(
        "You are signed out everywhere: 2 sessions of this API key ended."
    )
    expect(laptop.get_by_role("heading", level=1)).to_have_text("Sign in")

    phone.reload()
    expect(phone).to_have_url(re.compile(r"/signin\?next=/sync-jobs"))
    expect_signed_out(phone)


def test_declining_the_confirmation_ends_nothing(open_browser: Any, tenant: TenantContext) -> None:
    page = open_browser()
    sign_in(page, tenant.api_key)
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Sign out everywhere").click()
    page.reload()
    expect(page.get_by_role("heading", level=1)).to_have_text("Customers")


def test_the_session_id_changes_at_sign_in(open_browser: Any, tenant: TenantContext) -> None:
    page = open_browser()
    page.goto("/customers")
    expect(page).to_have_url(SIGN_IN_PAGE)
    before = session_cookie(page)["value"]
    page.get_by_label("API key").fill(tenant.api_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Customers")
    after = session_cookie(page)["value"]
    assert after.split(".")[0] != before.split(".")[0]

    # The id the browser held before signing in (which someone may have planted) opens nothing.
    planted = open_browser()
    planted.context.add_cookies([{**session_cookie(page), "value": before}])
    expect_signed_out(planted)


def test_a_revoked_key_ends_its_sessions_at_once(
    open_browser: Any, tenant: TenantContext, module_db: DatabaseUnderTest
) -> None:
    first, second = open_browser(), open_browser()
    sign_in(first, tenant.api_key)
    sign_in(second, tenant.api_key)

    async def revoke(session: AsyncSession) -> None:
        scope = await tenancy.resolve_api_key(session, tenant.api_key)
        assert scope is not None
        await tenancy.revoke_api_key(session, scope.api_key_id)

    outside_playwright(lambda: module_db.run(revoke))
    for page in (first, second):
        expect_signed_out(page, "revoked")


def test_an_idle_session_ends(open_browser: Any, tenant: TenantContext, module_db: DatabaseUnderTest) -> None:
    page = open_browser()
    sign_in(page, tenant.api_key)
    session_id = session_cookie(page)["value"].split(".")[0]

    async def two_hours_pass(session: AsyncSession) -> None:
        # FLEXSYNC_DASHBOARD_IDLE_MINUTES is at its default, 120.
        stored = await session.get(DashboardSession, dashboard_sessions.stored_id(session_id))
        assert stored is not None
        stored.last_seen_at -= timedelta(hours=2)

    outside_playwright(lambda: module_db.run(two_hours_pass))
    expect_signed_out(page, "Your session ended: it was idle too long")


def test_a_signed_in_not_found_page_keeps_the_navigation_and_sign_out(open_browser: Any, tenant: TenantContext) -> None:
    page = open_browser()
    sign_in(page, tenant.api_key)
    page.goto("/customers/cust_nobody")
    expect(page.get_by_role("heading", level=1)).to_have_text("Not found")
    expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Customers")).to_be_visible()
    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("You are signed out.")


def test_a_form_posted_without_its_token_signs_nobody_out(open_browser: Any, tenant: TenantContext) -> None:
    page = open_browser()
    sign_in(page, tenant.api_key)
    page.locator("form[action='/signout'] input[name=csrf_token]").evaluate("input => input.remove()")
    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Not allowed")
    page.goto("/customers")
    expect(page.get_by_role("heading", level=1)).to_have_text("Customers")


def test_long_names_in_the_header_are_cut_short_with_the_full_name_on_hover(
    open_browser: Any, module_db: DatabaseUnderTest, dashboard: Server
) -> None:
    tenant_name = "Northwind Traders International Holdings " * 5
    environment_name = "production-europe-west-primary-" * 6

    async def long_names(session: AsyncSession) -> str:
        tenant = await tenancy.create_tenant(session, tenant_name)
        environment = await tenancy.create_environment(session, tenant.id, environment_name)
        return (await tenancy.create_api_key(session, tenant.id, environment.id)).key

    key = outside_playwright(lambda: module_db.run(long_names))
    page = open_browser()
    sign_in(page, key)
    bar = page.locator("header.topbar")
    short = open_browser()
    sign_in(short, outside_playwright(lambda: new_tenant(module_db, dashboard.base_url)).api_key)
    # The bar keeps the height it has with short names: nothing wrapped.
    assert bar.bounding_box()["height"] == short.locator("header.topbar").bounding_box()["height"]  # type: ignore[index]
    for label, name in (("Tenant", tenant_name.strip()), ("Environment", environment_name.strip())):
        shown = page.locator(".scope-name", has_text=name[:20])
        expect(shown).to_have_attribute("title", f"{label}: {name}")
        assert shown.evaluate("element => element.scrollWidth > element.clientWidth"), f"{label} is not cut short"
