"""Encryption at rest for Stripe secrets: Fernet tokens under a list of keys, newest first (rotation)."""

from __future__ import annotations

from pathlib import Path

import structlog
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from flexsync.config import Settings

log = structlog.get_logger(__name__)


class SecretBox:
    """Encrypts with the newest key; decrypts with any. `rotate` re-encrypts under the newest key."""

    def __init__(self, keys: list[str]):
        if not keys:
            raise ValueError("at least one encryption key is required")
        try:
            fernets = [Fernet(key.encode()) for key in keys]
        except ValueError as exc:
            raise ValueError("FLEXSYNC_ENCRYPTION_KEYS must hold Fernet keys (32 url-safe base64 bytes)") from exc
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
    if not path.exists():
        path.write_text(Fernet.generate_key().decode() + "\n")
        path.chmod(0o600)
        log.warning(
            "FLEXSYNC_ENCRYPTION_KEYS is not set: generated a development key; set the variable in production",
            key_file=str(path),
        )
    return [path.read_text().strip()]


def secret_box(settings: Settings) -> SecretBox:
    return SecretBox(configured_keys(settings))
