"""Jinja2 templates and the filters they use."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

if TYPE_CHECKING:
    from flexsync.web.auth import Viewer

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"


def format_time(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso_time(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def stripe_customer_url(stripe_customer_id: str, mode: str | None) -> str:
    """The customer's page in Stripe's dashboard; test-mode objects live under /test/."""
    prefix = "https://dashboard.stripe.com/test" if mode == "test" else "https://dashboard.stripe.com"
    return f"{prefix}/customers/{stripe_customer_id}"


templates = Jinja2Templates(directory=TEMPLATES_DIR)
templates.env.filters["time"] = format_time
templates.env.filters["iso"] = iso_time
templates.env.globals["stripe_customer_url"] = stripe_customer_url
# Every form carries a key of its own, made when it is shown: the same form sent twice (a double click, a
# resubmit) is one write (flexsync/idempotency).
templates.env.globals["new_form_key"] = lambda: secrets.token_urlsafe(18)


# The main navigation: (key, path, label); a page passes its key to mark itself current.
NAV_ITEMS = [
    ("customers", "/customers", "Customers"),
    ("webhook-events", "/webhook-events", "Webhook deliveries"),
    ("sync-jobs", "/sync-jobs", "Sync jobs"),
    ("reconciliation", "/reconciliation", "Reconciliation"),
    ("integrations", "/settings/integrations", "Settings > Integrations"),
]

# Pages load only their own stylesheet and script, are never framed, and are not kept in caches
# (so Back after sign-out shows nothing of the tenant's data).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

# Messages shown after a redirect, chosen by a fixed code so no page ever echoes text from the URL.
NOTICES = {
    "signed-out": "You are signed out.",
    "key-revoked": "That session's API key was revoked or removed. Sign in with a valid key.",
    "session-expired": "Your session ended: it was idle too long, or began more than 12 hours ago. Sign in again.",
    "customer-created": "Customer created.",
    "customer-saved": "Customer saved.",
    "customer-archived": "Customer archived.",
    "sync-queued": "Sync to Stripe queued.",
    "connection-created": "Stripe connection added.",
    "connection-saved": "Stripe connection saved.",
    "connection-disabled": "Stripe connection disabled: nothing syncs until it is enabled again.",
    "connection-enabled": "Stripe connection enabled.",
    "connection-deleted": "Stripe connection deleted, with its secrets. You can add a new one.",
    "webhook-endpoint-ready": "Stripe webhook endpoint ready: Stripe sends the customer events to flexsync, "
    "signed with the secret flexsync stored.",
    "event-replayed": "Webhook event replayed.",
    "job-retried": "Sync job queued to run now.",
    "reconciliation-started": "Reconciliation started: this page follows it until it finishes.",
    "reconciliation-resumed": "The unfinished run with these options resumed where it stopped.",
    "catch-up-requested": "Catch-up asked for: a worker lists Stripe's events in a moment.",
}


def render(
    request: Request,
    name: str,
    viewer: Viewer | None,
    context: dict[str, Any],
    *,
    nav: str = "",
    status_code: int = 200,
) -> Response:
    """A page: the template, plus what every page needs (the viewer, its CSRF token, the nav, a notice)."""
    full = {
        "viewer": viewer,
        "csrf_token": viewer.csrf_token if viewer is not None else None,
        "nav": nav,
        "nav_items": NAV_ITEMS,
        "notice": NOTICES.get(request.query_params.get("notice", "")),
        **context,
    }
    return templates.TemplateResponse(request, name, full, status_code=status_code, headers=PAGE_HEADERS)
