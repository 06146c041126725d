"""Stripe customer requests shared by the sync's job and the integrations API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from flexsync.stripe.calls import StripeAccount, StripeCaller, StripeCallFailed
from flexsync.stripe.mapping import FLEXPRICE_ID_KEY

if TYPE_CHECKING:
    from stripe.params import CustomerUpdateParams


class StripeCustomerMissing(Exception):
    """The Stripe customer to adopt does not exist, or was deleted in Stripe. The message is shown to users."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


async def adopt(
    caller: StripeCaller, account: StripeAccount, stripe_customer_id: str, customer_id: str, idempotency_key: str
) -> dict[str, Any]:
    """Check that the Stripe customer exists and stamp it with `metadata.flexprice_customer_id` (Stripe keeps its
    other data); returns the Stripe customer as it is then. Raises StripeCustomerMissing or StripeCallFailed."""
    try:
        existing = await caller.call(
            account, "customers.retrieve", lambda c: c.v1.customers.retrieve_async(stripe_customer_id)
        )
    except StripeCallFailed as failure:
        if failure.http_status == 404:
            raise StripeCustomerMissing(
                f"Stripe customer {stripe_customer_id} does not exist ({failure.message})"
            ) from None
        raise
    if getattr(existing, "deleted", False):
        raise StripeCustomerMissing(f"Stripe customer {stripe_customer_id} was deleted in Stripe")
    params = cast("CustomerUpdateParams", {"metadata": {FLEXPRICE_ID_KEY: customer_id}})
    updated = await caller.call(
        account,
        "customers.update",
        lambda c: c.v1.customers.update_async(stripe_customer_id, params, options={"idempotency_key": idempotency_key}),
    )
    stamped: dict[str, Any] = updated.to_dict()
    return stamped
