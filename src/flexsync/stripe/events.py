"""Listing Stripe's events (`GET /v1/events`), one page at a time, for catch-up (webhooks/catch_up.py).

One list per event type, with `type` (exact) and a `created` window: Stripe and localstripe both take that,
while localstripe refuses `types[]`. Three lists cost three requests when nothing changed; one unfiltered
list would read every other event of the account (invoices, charges, ...) as well.

The page is read raw (`raw_request`, parsed JSON): the events are stored as Stripe sent them, so the SDK's
objects would only be built to be turned back into dicts. Stripe lists newest first and localstripe oldest first: the
caller orders what it gets, never relying on either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import stripe

from flexsync.stripe.calls import StripeAccount, StripeCaller

PAGE_SIZE = 100


@dataclass(frozen=True, slots=True)
class EventsPage:
    events: list[dict[str, Any]]
    has_more: bool

    @property
    def last_id(self) -> str | None:
        """Where the next page starts (`starting_after`)."""
        return str(self.events[-1]["id"]) if self.events else None


async def list_events_page(
    caller: StripeCaller,
    account: StripeAccount,
    *,
    event_type: str,
    created_gte: int,
    created_lte: int,
    starting_after: str | None,
) -> EventsPage:
    """One page of the account's events of this type created in [created_gte, created_lte]; raises
    StripeCallFailed."""
    params: dict[str, Any] = {
        "type": event_type,
        "created": {"gte": created_gte, "lte": created_lte},
        "limit": PAGE_SIZE,
    }
    if starting_after is not None:
        params["starting_after"] = starting_after

    async def request(client: stripe.StripeClient) -> Any:
        return await client.raw_request_async("get", "/v1/events", **params)

    response = await caller.call(account, "events.list", request)
    body = response.data  # the SDK parsed the JSON already, to look for an error
    events = [event for event in body.get("data") or [] if isinstance(event, dict) and isinstance(event.get("id"), str)]
    return EventsPage(events=events, has_more=bool(body.get("has_more")) and bool(events))
