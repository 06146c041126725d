"""Reading a connection's secrets: decrypted only in memory, only when a Stripe call or a signature needs them."""

from __future__ import annotations

from flexsync.crypto import SecretBox
from flexsync.models import StripeConnection


def secret_key(box: SecretBox, connection: StripeConnection) -> str:
    return box.decrypt(connection.secret_key_encrypted)


def webhook_secrets(box: SecretBox, connection: StripeConnection) -> list[str]:
    """Every active signing secret, newest first: during rotation both the new and the old one verify."""
    return [box.decrypt(token) for token in connection.webhook_secrets_encrypted]
