"""`flexsync rotate-keys`: every stored Stripe secret re-encrypted under a new key, run as a real process.

Rotation rewrites every connection in a database, so this test has a database of its own per backend
instead of the shared one (whose server keeps using the test key).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.crypto import SecretBox
from tests.cli_support import Completed, run_flexsync
from tests.support import (
    TEST_ENCRYPTION_KEY,
    DatabaseUnderTest,
    LocalStripe,
    new_tenant,
    server_env,
    start_server,
)

OLD_KEY = TEST_ENCRYPTION_KEY
NEW_KEY = Fernet.generate_key().decode()
STRIPE_KEYS = {
    "first": ("sk_test_51FirstTenant7hQ2mX9vK4pL", "pk_test_51FirstTenantPublicKey"),
    "second": ("sk_test_51SecondTenant3nB8wR5tY1", "pk_test_51SecondTenantPublicKey"),
}
WEBHOOK_SECRETS = ("whsec_OlderSecret4Kd9Lm2", "whsec_NewerSecret8Qp3Zx7", "whsec_OnlySecret5Tv1Hn6")


def rotate_keys(db: DatabaseUnderTest, workdir: Path, keys: str) -> Completed:
    return run_flexsync(["rotate-keys", "--json"], env=server_env(db, FLEXSYNC_ENCRYPTION_KEYS=keys), cwd=workdir)


def stored_tokens(db: DatabaseUnderTest) -> dict[str, list[str]]:
    """Each connection's encrypted secrets as stored: [secret key, *webhook secrets]."""

    async def read(session: AsyncSession) -> dict[str, list[str]]:
        rows = await session.execute(
            text("SELECT id, secret_key_encrypted, webhook_secrets_encrypted FROM connections ORDER BY id")
        )
        tokens: dict[str, list[str]] = {}
        for connection_id, secret_key, webhook_secrets in rows:
            webhook = json.loads(webhook_secrets) if isinstance(webhook_secrets, str) else webhook_secrets
            tokens[connection_id] = [token for token in [secret_key, *webhook] if token]
        return tokens

    return db.run(read)


def decrypt_all(keys: list[str], tokens: dict[str, list[str]]) -> dict[str, list[str]]:
    box = SecretBox(keys)
    return {
        connection_id: [box.decrypt(t) for t in connection_tokens]
        for connection_id, connection_tokens in tokens.items()
    }


def test_rotate_keys_moves_every_secret_to_the_new_key(
    fresh_db: DatabaseUnderTest, localstripe_server: LocalStripe, tmp_path: Path
) -> None:
    stripe_base = {"FLEXSYNC_STRIPE_API_BASE": localstripe_server.base_url}
    ids: dict[str, Any] = {}
    server = start_server(fresh_db, tmp_path, "--no-worker", **stripe_base)
    try:
        for label, (secret_key, publishable_key) in STRIPE_KEYS.items():
            with new_tenant(fresh_db, server.base_url).client() as api:
                body = {"name": label, "secret_key": secret_key, "publishable_key": publishable_key}
                if label == "first":
                    body["webhook_secret"] = WEBHOOK_SECRETS[0]
                created = api.post("/v1/connections", json=body).json()
                if label == "first":
                    api.put(f"/v1/connections/{created['id']}", json={"add_webhook_secret": WEBHOOK_SECRETS[1]})
                else:
                    api.put(f"/v1/connections/{created['id']}", json={"webhook_secret": WEBHOOK_SECRETS[2]})
                ids[label] = (created["id"], api.headers["x-api-key"])
        with new_tenant(fresh_db, server.base_url).client() as api:
            deleted = api.post(
                "/v1/connections", json={"name": "gone", "secret_key": "sk_test_gone1", "publishable_key": "pk_test_g"}
            ).json()
            api.delete(f"/v1/connections/{deleted['id']}")
    finally:
        server.stop()

    before = stored_tokens(fresh_db)
    plain = decrypt_all([OLD_KEY], before)
    assert plain == {
        ids["first"][0]: [STRIPE_KEYS["first"][0], WEBHOOK_SECRETS[1], WEBHOOK_SECRETS[0]],
        ids["second"][0]: [STRIPE_KEYS["second"][0], WEBHOOK_SECRETS[2]],
        deleted["id"]: [],
    }

    first_run = rotate_keys(fresh_db, tmp_path, f"{NEW_KEY},{OLD_KEY}")
    assert first_run.returncode == 0, first_run.stderr
    assert json.loads(first_run.stdout) == {"connections": 3, "rotated": 5, "already_current": 0}
    after = stored_tokens(fresh_db)
    for connection_id, tokens in after.items():
        assert set(tokens).isdisjoint(before[connection_id])
    assert decrypt_all([NEW_KEY], after) == plain
    with pytest.raises(ValueError, match="cannot be decrypted"):
        decrypt_all([OLD_KEY], after)

    second_run = rotate_keys(fresh_db, tmp_path, f"{NEW_KEY},{OLD_KEY}")
    assert json.loads(second_run.stdout) == {"connections": 3, "rotated": 0, "already_current": 5}
    assert stored_tokens(fresh_db) == after

    without_old_key = rotate_keys(fresh_db, tmp_path, OLD_KEY)
    assert without_old_key.returncode == 1
    assert "none of FLEXSYNC_ENCRYPTION_KEYS decrypts" in " ".join(without_old_key.stderr.split())
    assert stored_tokens(fresh_db) == after

    server = start_server(fresh_db, tmp_path, "--no-worker", FLEXSYNC_ENCRYPTION_KEYS=NEW_KEY, **stripe_base)
    try:
        connection_id, api_key = ids["first"]
        with httpx.Client(base_url=server.base_url, headers={"x-api-key": api_key}, timeout=30) as api:
            verified = api.put(f"/v1/connections/{connection_id}", json={"verify": True})
            assert verified.status_code == 200, verified.text
            assert verified.json()["webhook_secrets_count"] == 2
            # Adding a secret it already holds is a no-op only if the stored ones decrypt under the new key.
            again = api.put(f"/v1/connections/{connection_id}", json={"add_webhook_secret": WEBHOOK_SECRETS[0]})
            assert again.json()["webhook_secrets_count"] == 2
    finally:
        server.stop()


def test_rotate_keys_on_an_empty_database_and_with_a_bad_key(fresh_db: DatabaseUnderTest, tmp_path: Path) -> None:
    human = run_flexsync(["rotate-keys"], env=server_env(fresh_db, FLEXSYNC_ENCRYPTION_KEYS=NEW_KEY), cwd=tmp_path)
    assert human.returncode == 0, human.stderr
    assert "rotated 0 secrets of 0 connections" in human.stdout
    bad = rotate_keys(fresh_db, tmp_path, "not-a-fernet-key")
    assert bad.returncode == 1
    message = " ".join(bad.stderr.split())
    assert "FLEXSYNC_ENCRYPTION_KEYS: key 1 is not a Fernet key" in message and "not-a-fernet-key" not in message
