"""Encryption at rest for Stripe secrets: Fernet tokens under a list of keys, newest first (rotation)."""

from __future__ import annotations

from pathlib import Path

import structlog
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from flexsync.config import Settings

log = structlog.get_logger(__name__)


class EncryptionKeyError(ValueError):
    """The configured encryption keys cannot be used. The message says where they come from, never a key."""


class SecretBox:
    """Encrypts with the newest key; decrypts with any. `rotate` re-encrypts under the newest key."""

    def __init__(self, keys: list[str]):
        if not keys:
            raise ValueError("at least one encryption key is required")
        try:
            fernets = [Fernet(key.encode()) for key in keys]
        except ValueError as exc:
            raise EncryptionKeyError("encryption keys must be Fernet keys (32 url-safe base64 bytes)") from exc
        self._newest = fernets[0]
        self._fernet = MultiFernet(fernets)

    def encrypt(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ValueError("a stored secret cannot be decrypted with the configured encryption keys") from None

    def rotate(self, token: str) -> str:
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise ValueError("a stored secret cannot be decrypted with the configured encryption keys") from None

    def is_current(self, token: str) -> bool:
        """Whether `token` is encrypted under the newest key already, so rotation can leave it alone."""
        try:
            self._newest.decrypt(token.encode())
        except InvalidToken:
            return False
        return True


def configured_keys(settings: Settings) -> list[str]:
    """FLEXSYNC_ENCRYPTION_KEYS, or for development a key generated once into a local file."""
    keys = [k.strip() for k in settings.encryption_keys.split(",") if k.strip()]
    if keys:
        return keys
    path = Path(settings.encryption_key_file)
    try:
        if not path.exists():
            path.write_text(Fernet.generate_key().decode() + "\n")
            path.chmod(0o600)
            log.warning(
                "FLEXSYNC_ENCRYPTION_KEYS is not set: generated a development key; set the variable in production",
                key_file=str(path),
            )
        key = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not text"
        raise EncryptionKeyError(
            f"FLEXSYNC_ENCRYPTION_KEYS is not set and the development key file {path.resolve()} cannot be used: "
            f"{reason}"
        ) from None
    try:
        Fernet(key.encode())
    except ValueError:
        # Replacing the file on our own would strand every secret stored under the old key.
        raise EncryptionKeyError(
            f"FLEXSYNC_ENCRYPTION_KEYS is not set and the development key file {path.resolve()} does not hold a "
            "Fernet key: restore the file, or set FLEXSYNC_ENCRYPTION_KEYS (removing the file makes a new key, "
            "and Stripe secrets stored under the old one can then no longer be read)"
        ) from None
    return [key]


def secret_box(settings: Settings) -> SecretBox:
    return SecretBox(configured_keys(settings))
