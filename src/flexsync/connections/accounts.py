"""A connection as the Stripe edge takes it (stripe.calls.StripeAccount): plain values, the key decrypted."""

from __future__ import annotations

from flexsync.config import Settings
from flexsync.connections.secrets import secret_key
from flexsync.connections.settings import effective_settings
from flexsync.crypto import SecretBox
from flexsync.models import StripeConnection
from flexsync.stripe.calls import StripeAccount


def stripe_account(connection: StripeConnection, box: SecretBox, settings: Settings) -> StripeAccount:
    """The connection's account, at its `rate_limit` setting or else Stripe's default for the key's mode."""
    rate = effective_settings(connection.settings).rate_limit
    if rate is None:
        rate = settings.stripe_rate_limit_live if connection.mode == "live" else settings.stripe_rate_limit_test
    return StripeAccount(connection.id, secret_key(box, connection), rate)


def unsaved_account(key: str) -> StripeAccount:
    """A key being checked before it is saved: no connection yet, so no shared rate to book against."""
    return StripeAccount(None, key, None)
