"""The dashboard's session cookie and CSRF tokens: signed with a secret derived from the encryption keys."""

from __future__ import annotations

import time

from cryptography.fernet import Fernet

from flexsync.web.session import SESSION_MAX_AGE_SECONDS, Session, SessionSigner, signing_secrets
from tests.support import TEST_ENCRYPTION_KEY


def signer(*keys: str) -> SessionSigner:
    return SessionSigner(signing_secrets(list(keys or (TEST_ENCRYPTION_KEY,))))


def test_a_cookie_holds_the_key_id_and_a_signature_and_nothing_else_secret() -> None:
    session = signer().new_session("key_01ABC")
    cookie = signer().dumps(session)
    key_id, nonce, issued, _signature = cookie.split(".")
    assert (key_id, nonce, int(issued)) == ("key_01ABC", session.nonce, session.issued_at)
    assert TEST_ENCRYPTION_KEY not in cookie
    # Another process with the same keys (or this one after a restart) reads it.
    assert signer().loads(cookie) == session


def test_a_changed_cookie_is_refused() -> None:
    cookie = signer().dumps(signer().new_session("key_01ABC"))
    _key_id, rest = cookie.split(".", 1)
    assert signer().loads(f"key_01XYZ.{rest}") is None
    assert signer().loads(cookie[:-1] + ("A" if cookie[-1] != "A" else "B")) is None
    assert signer().loads("") is None
    assert signer().loads("not-a-cookie") is None
    assert signer(Fernet.generate_key().decode()).loads(cookie) is None


def test_an_old_session_expires() -> None:
    old = Session("key_01ABC", "nonce", int(time.time()) - SESSION_MAX_AGE_SECONDS - 1)
    assert signer().loads(signer().dumps(old)) is None


def test_sessions_survive_an_encryption_key_rotation() -> None:
    newest = Fernet.generate_key().decode()
    cookie = signer(TEST_ENCRYPTION_KEY).dumps(signer().new_session("key_01ABC"))
    rotated = signer(newest, TEST_ENCRYPTION_KEY)
    session = rotated.loads(cookie)
    assert session is not None and session.api_key_id == "key_01ABC"
    assert rotated.csrf_valid(session, signer(TEST_ENCRYPTION_KEY).csrf_token(session))
    # Once the old key is dropped, its sessions end.
    assert signer(newest).loads(cookie) is None


def test_a_csrf_token_belongs_to_one_session() -> None:
    first, second = signer().new_session("key_01ABC"), signer().new_session("key_01ABC")
    token = signer().csrf_token(first)
    assert signer().csrf_valid(first, token)
    assert not signer().csrf_valid(second, token)
    assert not signer().csrf_valid(first, None)
    assert not signer().csrf_valid(first, "")
