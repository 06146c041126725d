"""The dashboard's session cookie: a signed random session id, and the CSRF token that goes with it.

The id is all the cookie holds; what it opens is decided by its row in the database (tenancy/dashboard_sessions.py),
or, before sign-in, nothing: an id without a row only ties the sign-in form's CSRF token to the browser.
The signing secret is derived from the encryption keys, so cookies are valid in every process that shares those
keys; the newest key signs, any configured key verifies (rotation signs nobody out).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from flexsync.tenancy.dashboard_sessions import SESSION_LIFETIME

COOKIE_NAME = "flexsync_session"
# The browser keeps the cookie as long as a session can last at most.
COOKIE_MAX_AGE_SECONDS = int(SESSION_LIFETIME.total_seconds())
_SESSION_PURPOSE = b"flexsync dashboard session v1"


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

    def dumps(self, session_id: str) -> str:
        return f"{session_id}.{_mac(self._secrets[0], session_id)}"

    def loads(self, cookie: str | None) -> str | None:
        """The session id in a cookie, or None when it is missing or tampered with (no database lookup needed)."""
        if not cookie:
            return None
        session_id, _, signature = cookie.rpartition(".")
        # An id is one url-safe token: a cookie of the former format (several dotted parts) names no session.
        if (
            not session_id
            or "." in session_id
            or not any(hmac.compare_digest(signature, _mac(s, session_id)) for s in self._secrets)
        ):
            return None
        return session_id

    def csrf_token(self, session_id: str) -> str:
        return _mac(self._secrets[0], f"csrf.{session_id}")

    def csrf_valid(self, session_id: str, token: str | None) -> bool:
        if not token:
            return False
        return any(hmac.compare_digest(token, _mac(s, f"csrf.{session_id}")) for s in self._secrets)
