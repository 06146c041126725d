"""Reading a connection's secrets: decrypted only in memory, only when a Stripe call or a signature needs them."""

from __future__ import annotations

from flexsync.crypto import SecretBox
from flexsync.models import StripeConnection


def secret_key(box: SecretBox, connection: StripeConnection) -> str:
    return box.decrypt(connection.secret_key_encrypted)


def webhook_secrets(box: SecretBox, connection: StripeConnection) -> list[str]:
    """Every active signing secret, newest first: during rotation both the new and the old one verify."""
    return [box.decrypt(token) for token in connection.webhook_secrets_encrypted]


def rotate(box: SecretBox, connection: StripeConnection) -> tuple[int, int]:
    """Re-encrypt the connection's secrets under the newest key; returns (rotated, already current).

    Tokens already under the newest key are left as they are, so running rotation twice changes nothing.
    """
    rotated = current = 0

    def renew(token: str) -> str:
        nonlocal rotated, current
        if box.is_current(token):
            current += 1
            return token
        rotated += 1
        return box.rotate(token)

    # A deleted connection's secret key is wiped (empty): nothing to rotate.
    if connection.secret_key_encrypted:
        connection.secret_key_encrypted = renew(connection.secret_key_encrypted)
    connection.webhook_secrets_encrypted = [renew(token) for token in connection.webhook_secrets_encrypted]
    return rotated, current
