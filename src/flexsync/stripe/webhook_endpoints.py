"""Stripe's webhook endpoints API (`/v1/webhook_endpoints`), every request through `StripeCaller`.

Stripe returns an endpoint's signing secret only in the answer that creates it: `create` is the one place a
secret comes from, and it carries an Idempotency-Key so that a create whose answer was lost is replayed by
Stripe, secret included, never repeated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import stripe

from flexsync.logs import redact
from flexsync.stripe.calls import StripeAccount, StripeCaller, StripeCallFailed, stripe_call_backoff

CUSTOMER_EVENTS = ("customer.created", "customer.updated", "customer.deleted")
CONNECTION_METADATA_KEY = "flexsync_connection_id"
PAGE_SIZE = 100
# A person or a command waits for these requests: a few quick retries (0.5 s, 1 s, 2 s) of a 429, a 5xx or a lost
# connection, then the failure is theirs to see. The create is replayed under its Idempotency-Key.
ATTEMPTS = 4

T = TypeVar("T")
RefusalCause = Literal["endpoint_limit", "key_permission", "key_rejected", "url_refused", "refused", "unreachable"]


@dataclass(frozen=True, slots=True)
class StripeEndpoint:
    id: str
    url: str
    status: str
    enabled_events: tuple[str, ...]
    metadata: dict[str, str]
    secret: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, obj: Any) -> StripeEndpoint:
        data = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
        return cls(
            id=data["id"],
            url=data["url"],
            status=data.get("status") or "enabled",
            enabled_events=tuple(data.get("enabled_events") or ()),
            metadata=dict(data.get("metadata") or {}),
            secret=data.get("secret"),
        )


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why Stripe did not do what was asked, in words safe to show (no secret), and whether to try again later."""

    cause: RefusalCause
    message: str
    http_status: int | None
    retryable: bool


def refusal(failure: StripeCallFailed) -> Refusal:
    """Name the cause of a failed webhook-endpoint request: Stripe's test-mode limit of 16 endpoints, a
    restricted key without the Webhook Endpoints permission, a URL Stripe will not take (live mode wants https,
    and Stripe refuses addresses it cannot reach), a rejected key; Stripe's own reason is kept, redacted."""
    error = failure.__cause__ if isinstance(failure.__cause__, stripe.StripeError) else None
    reason = redact(error.user_message or "") if error is not None else ""
    param = getattr(error, "param", None) if error is not None else None
    status = failure.http_status
    said = f" (Stripe: {reason})" if reason else ""
    if failure.retryable:
        return Refusal("unreachable", f"Stripe could not be reached or was busy{said}", status, True)
    if status == 401:
        return Refusal("key_rejected", f"Stripe rejected the connection's secret key{said}", status, False)
    if status == 403 or isinstance(error, stripe.PermissionError):
        return Refusal(
            "key_permission",
            "the connection's key may not manage webhook endpoints: give the restricted key write access to "
            f"Webhook Endpoints, or use a secret key{said}",
            status,
            False,
        )
    if param == "url" or "url" in reason.lower():
        return Refusal(
            "url_refused",
            "Stripe does not accept the webhook URL: it must be a public address, and https in live mode "
            f"(set FLEXSYNC_PUBLIC_URL){said}",
            status,
            False,
        )
    if "maximum" in reason.lower() or "limit" in reason.lower():
        return Refusal(
            "endpoint_limit",
            f"the Stripe account has as many webhook endpoints as Stripe allows: delete one you no longer use{said}",
            status,
            False,
        )
    return Refusal("refused", f"Stripe refused the webhook endpoint request{said}", status, False)


async def _call(
    caller: StripeCaller, account: StripeAccount, operation: str, request: Callable[[stripe.StripeClient], Awaitable[T]]
) -> T:
    attempt = 1
    while True:
        try:
            return await caller.call(account, operation, request)
        except StripeCallFailed as failure:
            if not failure.retryable or attempt >= ATTEMPTS:
                raise
        await asyncio.sleep(stripe_call_backoff(attempt))
        attempt += 1


async def list_all(caller: StripeCaller, account: StripeAccount) -> list[StripeEndpoint]:
    """Every webhook endpoint of the account (Stripe allows a few dozen at most: a page or two)."""
    found: list[StripeEndpoint] = []
    starting_after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": PAGE_SIZE}
        if starting_after is not None:
            params["starting_after"] = starting_after
        page = await _list_page(caller, account, params)
        found += [StripeEndpoint.of(item) for item in page.data]
        if not page.has_more or not page.data:
            return found
        starting_after = page.data[-1].id


async def _list_page(caller: StripeCaller, account: StripeAccount, params: dict[str, Any]) -> Any:
    return await _call(
        caller,
        account,
        "webhook_endpoints.list",
        lambda client: client.v1.webhook_endpoints.list_async(params),  # type: ignore[arg-type]
    )


async def create(
    caller: StripeCaller,
    account: StripeAccount,
    url: str,
    description: str,
    idempotency_key: str,
    *,
    connection_id: str,
) -> StripeEndpoint:
    params: dict[str, Any] = {
        "url": url,
        "enabled_events": list(CUSTOMER_EVENTS),
        "description": description,
        "metadata": {CONNECTION_METADATA_KEY: connection_id},
    }
    options: dict[str, Any] = {"idempotency_key": idempotency_key}
    created = await _call(
        caller,
        account,
        "webhook_endpoints.create",
        lambda client: client.v1.webhook_endpoints.create_async(params, options),  # type: ignore[arg-type]
    )
    return StripeEndpoint.of(created)


async def update(caller: StripeCaller, account: StripeAccount, endpoint_id: str, **params: Any) -> StripeEndpoint:
    updated = await _call(
        caller,
        account,
        "webhook_endpoints.update",
        lambda client: client.v1.webhook_endpoints.update_async(endpoint_id, params),  # type: ignore[arg-type]
    )
    return StripeEndpoint.of(updated)


async def retrieve(caller: StripeCaller, account: StripeAccount, endpoint_id: str) -> StripeEndpoint | None:
    """The endpoint, or None when Stripe no longer has it (deleted in Stripe's dashboard)."""
    try:
        found = await _call(
            caller,
            account,
            "webhook_endpoints.retrieve",
            lambda client: client.v1.webhook_endpoints.retrieve_async(endpoint_id),
        )
    except StripeCallFailed as failure:
        if failure.http_status == 404:
            return None
        raise
    return StripeEndpoint.of(found)


async def delete(caller: StripeCaller, account: StripeAccount, endpoint_id: str) -> None:
    """Delete the endpoint; one Stripe no longer has counts as deleted."""
    try:
        await _call(
            caller,
            account,
            "webhook_endpoints.delete",
            lambda client: client.v1.webhook_endpoints.delete_async(endpoint_id),
        )
    except StripeCallFailed as failure:
        if failure.http_status != 404:
            raise
