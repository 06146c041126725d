"""Webhook events as the API shows them (`service.event_to_dict`), and the answer to a delivery, for /openapi.json."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from flexsync.kit.pagination import ListPage
from flexsync.kit.schemas import ResponseModel

EventStatus = Literal["queued", "applied", "ignored", "failed", "dead"]
EventSource = Literal["webhook", "catch_up"]


class WebhookEvent(ResponseModel):
    id: str = Field(description="flexsync's id (`whevt_…`).")
    stripe_event_id: str
    type: str
    status: EventStatus
    attempts: int
    last_error: str | None
    note: str | None = Field(description="Why it was ignored, or Stripe data that was not copied.")
    customer_id: str | None
    stripe_object_id: str | None
    connection_id: str
    livemode: bool
    stripe_created: int = Field(description="Stripe's `created`, in Unix seconds.")
    received_at: datetime
    processed_at: datetime | None
    next_attempt_at: datetime | None
    source: EventSource = Field(
        description="`webhook`: delivered by Stripe; `catch_up`: listed from Stripe's Events API."
    )


class WebhookEventWithPayload(WebhookEvent):
    payload: dict[str, Any] = Field(description="The event as Stripe sent it.")


class WebhookEventList(ListPage[WebhookEvent]):
    pass


class WebhookReceived(ResponseModel):
    """Stripe's dashboard shows this answer for each delivery."""

    received: Literal[True]
    event_id: str = Field(description="Stripe's event id (`evt_…`).")
    status: Literal["applied", "duplicate", "ignored", "queued"] = Field(
        description="`queued`: stored, and applied moments later by the retry sweep; `duplicate`: stored already."
    )
