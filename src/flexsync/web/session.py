"""The dashboard session: a signed cookie holding an API key id, never the key, and a per-session nonce.

The signing secret is derived from the encryption keys, so sessions survive restarts and are valid in every
process that shares those keys; the newest key signs, any configured key verifies (rotation signs nobody out).
The nonce is what makes the CSRF token per session: the token is an HMAC of it, checked on every POST.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

COOKIE_NAME = "flexsync_session"
# A session lasts at most this long, then the key must be entered again.
SESSION_MAX_AGE_SECONDS = 12 * 3600
_SESSION_PURPOSE = b"flexsync dashboard session v1"


@dataclass(frozen=True, slots=True)
class Session:
    """`api_key_id` is empty before sign-in: an anonymous session still carries a nonce for the sign-in form."""

    api_key_id: str
    nonce: str
    issued_at: int

    @property
    def signed_in(self) -> bool:
        return bool(self.api_key_id)


def signing_secrets(encryption_keys: list[str]) -> list[bytes]:
    """One signing secret per Fernet key, newest first; a derived value, so the encryption key never signs."""
    return [
        hmac.new(base64.urlsafe_b64decode(key.encode()), _SESSION_PURPOSE, hashlib.sha256).digest()
        for key in encryption_keys
    ]


def _mac(secret: bytes, message: str) -> str:
    digest = hmac.new(secret, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class SessionSigner:
    def __init__(self, secrets_newest_first: list[bytes]):
        if not secrets_newest_first:
            raise ValueError("at least one signing secret is required")
        self._secrets = secrets_newest_first

    def new_session(self, api_key_id: str = "") -> Session:
        # A fresh nonce at every sign-in and sign-out, so a token seen before sign-in is useless after it.
        return Session(api_key_id=api_key_id, nonce=secrets.token_urlsafe(16), issued_at=int(time.time()))

    def dumps(self, session: Session) -> str:
        body = f"{session.api_key_id}.{session.nonce}.{session.issued_at}"
        return f"{body}.{_mac(self._secrets[0], body)}"

    def loads(self, cookie: str | None) -> Session | None:
        """The session in a cookie, or None when it is missing, tampered with, or expired."""
        if not cookie:
            return None
        body, _, signature = cookie.rpartition(".")
        parts = body.split(".")
        if len(parts) != 3 or not any(hmac.compare_digest(signature, _mac(s, body)) for s in self._secrets):
            return None
        api_key_id, nonce, issued = parts
        if not issued.isdigit() or time.time() - int(issued) > SESSION_MAX_AGE_SECONDS:
            return None
        return Session(api_key_id=api_key_id, nonce=nonce, issued_at=int(issued))

    def csrf_token(self, session: Session) -> str:
        return _mac(self._secrets[0], f"csrf.{session.nonce}")

    def csrf_valid(self, session: Session, token: str | None) -> bool:
        if not token:
            return False
        return any(hmac.compare_digest(token, _mac(s, f"csrf.{session.nonce}")) for s in self._secrets)
