"""Settings > Integrations: the Stripe connection API over real HTTP, on SQLite and PostgreSQL.

Stripe is only asked when a request says `verify: true`; the shared server's Stripe is a closed port (conftest's
`no_stripe`), and the tests that need an answering Stripe run their own `flexsync serve` pointed at localstripe.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.crypto import SecretBox
from flexsync.tenancy import service as tenancy
from tests.support import (
    TEST_ENCRYPTION_KEY,
    DatabaseUnderTest,
    LocalStripe,
    Server,
    TenantContext,
    assert_error,
    new_tenant,
    start_server,
)

SECRET_KEY = "sk_test_51Qm4TcWa8Jx2RkVd7NpL3yHe9GuZs6BfXo1KiAr5MtYw0CqEj4UhPn8DvLgSb2OzFIaXc7R3"
PUBLISHABLE_KEY = "pk_test_51Qm4TcWa8Jx2RkVdPublic9vT3nQ7eK1wB5yM8hL2cZ6aF4gJ0sD3uR7iP5oX1tN9k"
WEBHOOK_SECRET = "whsec_Xq3vB7nM2kL9pR4tY6wZ8aC1dF5gH0jK"
LIVE_SECRET_KEY = "sk_live_51Hb7NwQ3eZt9XyKa2Lm5VcR8Dp1Sg4Uj6Fo0Ti3Ye7Wn2Bk9Mh5Ar8Cx1Qz4Lv42"
LIVE_PUBLISHABLE_KEY = "pk_live_51Hb7NwQ3eZt9XyKaPublic2rG6nV0xM4pL8dS1jW5qT9cE3kY7bH0fU2iO6Pb77"
SECRETS = (SECRET_KEY, WEBHOOK_SECRET, LIVE_SECRET_KEY)

CONNECTION_KEYS = {
    "id", "name", "provider", "status", "mode", "secret_key_last4", "publishable_key", "webhook_secret_set",
    "webhook_secrets_count", "webhook_url", "settings", "stripe_account_id", "tenant_id", "environment_id",
    "created_at", "updated_at", "catch_up",
}  # fmt: skip
# The managed Stripe webhook endpoint (tests/connections/test_managed_endpoint.py); null unless flexsync manages one.
CONNECTION_KEYS.add("webhook_endpoint")
DEFAULT_SETTINGS = {
    "inbound_enabled": True,
    "outbound_enabled": True,
    "push_updates": True,
    "email_matching": False,
    "on_stripe_delete": "ignore",
    "on_customer_archive": "ignore",
    "rate_limit": None,
    "on_catch_up_gap": "warn",
}


def body(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "Production Stripe",
        "provider": "stripe",
        "secret_key": SECRET_KEY,
        "publishable_key": PUBLISHABLE_KEY,
        "webhook_secret": WEBHOOK_SECRET,
        **overrides,
    }


def unmoving(connection: dict[str, Any]) -> dict[str, Any]:
    """The connection without what moves with the clock (its catch-up's seconds behind now), to compare two
    answers."""
    return {**connection, "catch_up": {k: v for k, v in connection["catch_up"].items() if k != "lag_seconds"}}


def create(api: httpx.Client, **overrides: Any) -> dict[str, Any]:
    response = api.post("/v1/connections", json=body(**overrides))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


# A secret's prefix followed by any of its characters; messages may name a bare prefix ("sk_test_…").
SECRET_SHAPE = re.compile(r"(?:sk|rk)_(?:test|live)_[A-Za-z0-9]|whsec_[A-Za-z0-9]")


def assert_no_secret(text_: str) -> None:
    """No secret, nor any piece of one beyond `secret_key_last4`."""
    for secret in SECRETS:
        assert secret not in text_
        assert secret[-12:-4] not in text_
    assert SECRET_SHAPE.search(text_) is None, text_


def stored_webhook_secrets(database: DatabaseUnderTest, connection_id: str) -> list[str]:
    async def read(session: AsyncSession) -> list[str]:
        raw = (
            await session.execute(
                text("SELECT webhook_secrets_encrypted FROM connections WHERE id = :id"), {"id": connection_id}
            )
        ).scalar_one()
        tokens: list[str] = json.loads(raw) if isinstance(raw, str) else raw
        return tokens

    box = SecretBox([TEST_ENCRYPTION_KEY])
    return [box.decrypt(token) for token in database.run(read)]


def test_create_returns_the_connection_without_secrets(
    api: httpx.Client, tenant: TenantContext, server: Server, database: DatabaseUnderTest
) -> None:
    response = api.post("/v1/connections", json=body(settings={"email_matching": True}))
    assert response.status_code == 201, response.text
    assert_no_secret(response.text)
    created = response.json()
    assert set(created) == CONNECTION_KEYS
    assert created["id"].startswith("conn_") and len(created["id"]) == 31
    assert created["name"] == "Production Stripe"
    assert (created["provider"], created["status"], created["mode"]) == ("stripe", "active", "test")
    assert created["secret_key_last4"] == SECRET_KEY[-4:]
    assert created["publishable_key"] == PUBLISHABLE_KEY
    assert (created["webhook_secret_set"], created["webhook_secrets_count"]) == (True, 1)
    assert created["webhook_url"] == (
        f"{server.base_url}/v1/webhooks/stripe/{tenant.tenant_id}/{tenant.environment_id}"
    )
    assert created["settings"] == {**DEFAULT_SETTINGS, "email_matching": True}
    assert created["stripe_account_id"] is None
    assert (created["tenant_id"], created["environment_id"]) == (tenant.tenant_id, tenant.environment_id)
    assert created["created_at"].endswith("Z") and created["updated_at"] == created["created_at"]

    assert unmoving(api.get(f"/v1/connections/{created['id']}").json()) == unmoving(created)
    listed = api.get("/v1/connections").json()
    listed["items"] = [unmoving(item) for item in listed["items"]]
    assert listed == {"items": [unmoving(created)], "pagination": {"total": 1, "limit": 50, "offset": 0}}
    assert stored_webhook_secrets(database, created["id"]) == [WEBHOOK_SECRET]


def test_live_keys_make_a_live_connection_and_keys_are_trimmed(api: httpx.Client) -> None:
    created = create(
        api,
        secret_key=f"  {LIVE_SECRET_KEY}\n",
        publishable_key=f"{LIVE_PUBLISHABLE_KEY} ",
        webhook_secret=f"{WEBHOOK_SECRET}\n",
    )
    assert created["mode"] == "live"
    assert created["secret_key_last4"] == LIVE_SECRET_KEY[-4:]
    assert created["publishable_key"] == LIVE_PUBLISHABLE_KEY


def test_restricted_keys_and_default_provider_are_accepted(api: httpx.Client) -> None:
    payload = body(secret_key="rk_test_51RestrictedKey0000000000000000000000000000000000000000000Rk12")
    del payload["provider"]
    response = api.post("/v1/connections", json=payload)
    assert response.status_code == 201, response.text
    assert (response.json()["provider"], response.json()["mode"]) == ("stripe", "test")


def test_webhook_secret_can_be_added_after_creation(api: httpx.Client) -> None:
    """The seed's Step 1: the signing secret exists only after the Stripe endpoint is made in Step 2."""
    payload = body()
    del payload["webhook_secret"]
    created = api.post("/v1/connections", json=payload).json()
    assert (created["webhook_secret_set"], created["webhook_secrets_count"]) == (False, 0)
    assert created["webhook_url"].endswith(f"/v1/webhooks/stripe/{created['tenant_id']}/{created['environment_id']}")
    updated = api.put(f"/v1/connections/{created['id']}", json={"webhook_secret": WEBHOOK_SECRET})
    assert updated.status_code == 200, updated.text
    assert (updated.json()["webhook_secret_set"], updated.json()["webhook_secrets_count"]) == (True, 1)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"secret_key": PUBLISHABLE_KEY}, "secret_key"),
        ({"secret_key": "sk_prod_51Abcdefghijklmnop"}, "secret_key"),
        ({"secret_key": "sk_test_"}, "secret_key"),
        ({"secret_key": "sk_test_has spaces inside"}, "secret_key"),
        ({"secret_key": "sk_test_" + "a" * 300}, "secret_key"),
        ({"secret_key": 12345}, "secret_key"),
        ({"publishable_key": SECRET_KEY}, "publishable_key"),
        ({"publishable_key": "pk_sandbox_123"}, "publishable_key"),
        ({"webhook_secret": SECRET_KEY}, "webhook_secret"),
        ({"webhook_secret": "whsec_"}, "webhook_secret"),
        ({"publishable_key": LIVE_PUBLISHABLE_KEY}, "publishable_key"),
        ({"secret_key": LIVE_SECRET_KEY}, "publishable_key"),
        ({"settings": {"auto_archive": True}}, "settings.auto_archive"),
        ({"settings": {"on_stripe_delete": "destroy"}}, "settings.on_stripe_delete"),
        ({"settings": {"on_customer_archive": "archive"}}, "settings.on_customer_archive"),
        ({"settings": {"inbound_enabled": "sometimes"}}, "settings.inbound_enabled"),
        ({"settings": ["inbound_enabled"]}, "settings"),
        ({"provider": "paypal"}, "provider"),
        ({"api_version": "2024-06-20"}, "api_version"),
        ({"name": None}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "Stripe\x00"}, "name"),  # PostgreSQL's text cannot hold a NUL character
        ({"verify": "maybe"}, "verify"),
    ],
)
def test_bad_input_is_rejected_and_nothing_written(api: httpx.Client, overrides: dict[str, Any], field: str) -> None:
    response = api.post("/v1/connections", json=body(**overrides))
    error = assert_error(response, 400, "validation_error")
    assert field in error["details"]["fields"], error
    assert_no_secret(response.text)
    assert api.get("/v1/connections").json()["pagination"]["total"] == 0


@pytest.mark.parametrize("missing", ["name", "secret_key", "publishable_key"])
def test_required_fields(api: httpx.Client, missing: str) -> None:
    payload = body()
    del payload[missing]
    error = assert_error(api.post("/v1/connections", json=payload), 400, "validation_error")
    assert missing in error["details"]["fields"]


def test_mixed_modes_say_which_mode_is_expected(api: httpx.Client) -> None:
    error = assert_error(
        api.post("/v1/connections", json=body(publishable_key=LIVE_PUBLISHABLE_KEY)), 400, "validation_error"
    )
    assert "test-mode" in error["message"] and "live-mode" in error["message"]


def test_one_connection_per_environment(api: httpx.Client, tenant: TenantContext) -> None:
    first = create(api)
    error = assert_error(api.post("/v1/connections", json=body(name="Second")), 409, "already_exists")
    assert error["details"]["connection_id"] == first["id"]
    api.put(f"/v1/connections/{first['id']}", json={"status": "disabled"})
    assert_error(api.post("/v1/connections", json=body(name="Third")), 409, "already_exists")
    assert api.get("/v1/connections").json()["pagination"]["total"] == 1


def test_concurrent_creates_have_one_winner(tenant: TenantContext) -> None:
    def attempt(i: int) -> httpx.Response:
        with tenant.client() as client:
            return client.post("/v1/connections", json=body(name=f"Racer {i}"))

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(attempt, range(10)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 9, [r.text for r in responses]
    for response in responses:
        assert_no_secret(response.text)
    with tenant.client() as client:
        assert client.get("/v1/connections").json()["pagination"]["total"] == 1


def test_delete_frees_the_environment(api: httpx.Client) -> None:
    first = create(api)
    deleted = api.delete(f"/v1/connections/{first['id']}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert_error(api.get(f"/v1/connections/{first['id']}"), 404, "not_found")
    assert_error(api.put(f"/v1/connections/{first['id']}", json={"name": "x"}), 404, "not_found")
    assert_error(api.delete(f"/v1/connections/{first['id']}"), 404, "not_found")
    assert api.get("/v1/connections").json()["pagination"]["total"] == 0
    second = create(api, name="Replacement")
    assert second["id"] != first["id"]
    assert [c["id"] for c in api.get("/v1/connections").json()["items"]] == [second["id"]]


def test_deleted_connection_keeps_no_secret(api: httpx.Client, database: DatabaseUnderTest) -> None:
    created = create(api)
    api.delete(f"/v1/connections/{created['id']}")

    async def read(session: AsyncSession) -> Any:
        query = (
            "SELECT status, deleted_at, secret_key_encrypted, webhook_secrets_encrypted FROM connections WHERE id = :id"
        )
        return (await session.execute(text(query), {"id": created["id"]})).one()

    status, deleted_at, secret_key_token, webhook_tokens = database.run(read)
    assert status == "deleted" and deleted_at is not None
    assert secret_key_token == ""
    assert (json.loads(webhook_tokens) if isinstance(webhook_tokens, str) else webhook_tokens) == []


def test_partial_update(api: httpx.Client) -> None:
    created = create(api, settings={"email_matching": True, "on_stripe_delete": "unlink"})
    connection_url = f"/v1/connections/{created['id']}"

    renamed = api.put(connection_url, json={"name": "  Renamed  "}).json()
    assert renamed["name"] == "Renamed"
    assert renamed["updated_at"] >= created["updated_at"]
    assert {k: v for k, v in unmoving(renamed).items() if k not in ("name", "updated_at")} == {
        k: v for k, v in unmoving(created).items() if k not in ("name", "updated_at")
    }

    merged = api.put(connection_url, json={"settings": {"on_stripe_delete": "archive", "push_updates": False}}).json()
    assert merged["settings"] == {
        **DEFAULT_SETTINGS,
        "email_matching": True,
        "on_stripe_delete": "archive",
        "push_updates": False,
    }

    assert api.put(connection_url, json={"status": "disabled"}).json()["status"] == "disabled"
    assert api.get(connection_url).json()["status"] == "disabled"
    assert api.put(connection_url, json={"status": "active"}).json()["status"] == "active"

    new_key = SECRET_KEY[:-4] + "Zz99"
    response = api.put(connection_url, json={"secret_key": new_key, "publishable_key": PUBLISHABLE_KEY[:-3] + "New"})
    assert response.status_code == 200, response.text
    assert_no_secret(response.text)
    assert response.json()["secret_key_last4"] == "Zz99"
    assert response.json()["publishable_key"] == PUBLISHABLE_KEY[:-3] + "New"
    assert response.json()["mode"] == "test"

    unchanged = api.put(connection_url, json={}).json()
    assert unchanged == api.get(connection_url).json()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"secret_key": LIVE_SECRET_KEY, "publishable_key": LIVE_PUBLISHABLE_KEY}, "secret_key"),
        ({"publishable_key": LIVE_PUBLISHABLE_KEY}, "publishable_key"),
        ({"secret_key": "pk_test_wrong_field"}, "secret_key"),
        ({"name": None}, "name"),
        ({"secret_key": None}, "secret_key"),
        ({"settings": None}, "settings"),
        ({"settings": {"bogus": 1}}, "settings.bogus"),
        ({"settings": {"on_customer_archive": "explode"}}, "settings.on_customer_archive"),
        ({"status": "deleted"}, "status"),
        ({"status": None}, "status"),
        ({"provider": "stripe"}, "provider"),
        ({"webhook_secret": "sk_test_wrong"}, "webhook_secret"),
        ({"add_webhook_secret": None}, "add_webhook_secret"),
        ({"webhook_secret": WEBHOOK_SECRET, "add_webhook_secret": WEBHOOK_SECRET + "x"}, "add_webhook_secret"),
        ({"add_webhook_secret": WEBHOOK_SECRET + "x", "remove_old_webhook_secrets": True}, "add_webhook_secret"),
    ],
)
def test_bad_updates_are_rejected_and_change_nothing(api: httpx.Client, payload: dict[str, Any], field: str) -> None:
    created = create(api)
    response = api.put(f"/v1/connections/{created['id']}", json=payload)
    error = assert_error(response, 400, "validation_error")
    assert field in error["details"]["fields"], error
    assert_no_secret(response.text)
    assert unmoving(api.get(f"/v1/connections/{created['id']}").json()) == unmoving(created)


def test_webhook_secret_rotation(api: httpx.Client, database: DatabaseUnderTest) -> None:
    created = create(api)
    connection_url = f"/v1/connections/{created['id']}"
    newer = "whsec_NewerSigningSecret0000000000000001"
    newest = "whsec_NewestSigningSecret000000000000002"

    added = api.put(connection_url, json={"add_webhook_secret": newer})
    assert added.status_code == 200, added.text
    assert_no_secret(added.text)
    assert (added.json()["webhook_secret_set"], added.json()["webhook_secrets_count"]) == (True, 2)
    assert stored_webhook_secrets(database, created["id"]) == [newer, WEBHOOK_SECRET]

    again = api.put(connection_url, json={"add_webhook_secret": newer}).json()
    assert again["webhook_secrets_count"] == 2 and again["updated_at"] == added.json()["updated_at"]

    assert api.put(connection_url, json={"add_webhook_secret": newest}).json()["webhook_secrets_count"] == 3
    error = assert_error(
        api.put(connection_url, json={"add_webhook_secret": "whsec_OneTooMany0000"}), 400, "validation_error"
    )
    assert "remove_old_webhook_secrets" in error["message"]

    unchanged = api.put(connection_url, json={"name": "Renamed", "remove_old_webhook_secrets": False}).json()
    assert unchanged["webhook_secrets_count"] == 3
    kept = api.put(connection_url, json={"remove_old_webhook_secrets": True}).json()
    assert kept["webhook_secrets_count"] == 1
    assert stored_webhook_secrets(database, created["id"]) == [newest]

    replaced = api.put(connection_url, json={"webhook_secret": WEBHOOK_SECRET}).json()
    assert replaced["webhook_secrets_count"] == 1
    assert stored_webhook_secrets(database, created["id"]) == [WEBHOOK_SECRET]

    cleared = api.put(connection_url, json={"webhook_secret": None}).json()
    assert (cleared["webhook_secret_set"], cleared["webhook_secrets_count"]) == (False, 0)
    assert stored_webhook_secrets(database, created["id"]) == []


def test_no_secret_in_the_database_or_the_log(api: httpx.Client, database: DatabaseUnderTest, server: Server) -> None:
    created = create(api)
    api.put(f"/v1/connections/{created['id']}", json={"add_webhook_secret": "whsec_SecondSecret000000000000"})

    async def dump(session: AsyncSession) -> list[dict[str, Any]]:
        return [dict(row) for row in (await session.execute(text("SELECT * FROM connections"))).mappings()]

    # Whole prefixes only: a bare "sk_" turns up by chance in the base64 of Fernet tokens.
    plain_text_markers = ("sk_test_", "sk_live_", "rk_test_", "rk_live_", "whsec_", SECRET_KEY[8:], WEBHOOK_SECRET[6:])
    rows = database.run(dump)
    assert any(row["id"] == created["id"] for row in rows)
    for row in rows:
        for column, value in row.items():
            rendered = value if isinstance(value, str) else json.dumps(value, default=str)
            for marker in plain_text_markers:
                assert marker not in rendered, (column, row["id"])
    assert_no_secret(server.log())


def test_other_tenants_and_environments_are_invisible(
    api: httpx.Client, tenant: TenantContext, database: DatabaseUnderTest
) -> None:
    mine = create(api)
    other = new_tenant(database, tenant.base_url)

    async def second_env(session: AsyncSession) -> TenantContext:
        env = await tenancy.create_environment(session, tenant.tenant_id, "staging")
        key = await tenancy.create_api_key(session, tenant.tenant_id, env.id)
        return TenantContext(tenant.tenant_id, env.id, key.key, tenant.base_url)

    sibling = database.run(second_env)
    for outsider in (other, sibling):
        with outsider.client() as client:
            assert_error(client.get(f"/v1/connections/{mine['id']}"), 404, "not_found")
            assert_error(client.put(f"/v1/connections/{mine['id']}", json={"name": "x"}), 404, "not_found")
            assert_error(client.delete(f"/v1/connections/{mine['id']}"), 404, "not_found")
            assert client.get("/v1/connections").json()["pagination"]["total"] == 0
            theirs = client.post("/v1/connections", json=body(name="Theirs"))
            assert theirs.status_code == 201, theirs.text
    assert unmoving(api.get(f"/v1/connections/{mine['id']}").json()) == unmoving(mine)


def test_list_paging_and_auth(api: httpx.Client, anonymous: httpx.Client) -> None:
    create(api)
    assert api.get("/v1/connections", params={"limit": 1, "offset": 1}).json() == {
        "items": [],
        "pagination": {"total": 1, "limit": 1, "offset": 1},
    }
    assert_error(api.get("/v1/connections", params={"limit": 0}), 400, "validation_error")
    assert_error(api.get("/v1/connections", params={"limit": 1001}), 400, "validation_error")
    assert_error(anonymous.get("/v1/connections"), 401, "unauthorized")
    assert_error(anonymous.post("/v1/connections", json=body()), 401, "unauthorized")
    assert_error(api.get("/v1/connections/conn_missing"), 404, "not_found")


def test_openapi_documents_the_webhook_secret_fields(anonymous: httpx.Client) -> None:
    spec = anonymous.get("/openapi.json").json()
    assert {"/v1/connections", "/v1/connections/{connection_id}"} <= set(spec["paths"])
    assert "remove_old_webhook_secrets" in spec["paths"]["/v1/connections/{connection_id}"]["put"]["description"]


# --- verify: true, against a Stripe peer -------------------------------------------------------------------


@pytest.fixture(scope="module")
def stripe_server(
    database: DatabaseUnderTest, localstripe_server: LocalStripe, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A flexsync whose Stripe is localstripe."""
    running = start_server(
        database, tmp_path_factory.mktemp("verify"), "--no-worker", FLEXSYNC_STRIPE_API_BASE=localstripe_server.base_url
    )
    yield running
    running.stop()


def test_verify_against_localstripe(database: DatabaseUnderTest, stripe_server: Server) -> None:
    """localstripe has no /v1/account, so the account id stays unknown; the key check itself passes."""
    tenant = new_tenant(database, stripe_server.base_url)
    with tenant.client() as api:
        created = create(api, verify=True)
        assert created["stripe_account_id"] is None
        reverified = api.put(f"/v1/connections/{created['id']}", json={"verify": True})
        assert reverified.status_code == 200, reverified.text
        rolled = api.put(
            f"/v1/connections/{created['id']}", json={"secret_key": SECRET_KEY[:-4] + "Ab12", "verify": True}
        )
        assert rolled.status_code == 200, rolled.text
        assert rolled.json()["secret_key_last4"] == "Ab12"


def test_key_rejected_by_stripe_answers_400(database: DatabaseUnderTest, stripe_server: Server) -> None:
    """localstripe accepts every `sk_` key but answers 401 to any other key, as Stripe does to a revoked one:
    a well-formed restricted key (`rk_test_…`) therefore stands in for a key Stripe rejects."""
    rejected_key = "rk_test_51RevokedKey000000000000000000000000000000000000000000000Rv01"
    tenant = new_tenant(database, stripe_server.base_url)
    with tenant.client() as api:
        response = api.post("/v1/connections", json=body(secret_key=rejected_key, verify=True))
        error = assert_error(response, 400, "validation_error")
        assert "rejected the secret key" in error["message"]
        assert error["details"]["fields"] == {"secret_key": "rejected by Stripe"}
        assert rejected_key not in response.text and rejected_key[8:] not in response.text
        assert api.get("/v1/connections").json()["pagination"]["total"] == 0

        created = create(api)
        response = api.put(f"/v1/connections/{created['id']}", json={"secret_key": rejected_key, "verify": True})
        assert_error(response, 400, "validation_error")
        assert rejected_key[8:] not in response.text
        assert api.get(f"/v1/connections/{created['id']}").json()["secret_key_last4"] == SECRET_KEY[-4:]
    assert rejected_key[8:] not in stripe_server.log()


def test_unreachable_stripe_answers_400(database: DatabaseUnderTest, server: Server) -> None:
    tenant = new_tenant(database, server.base_url)
    with tenant.client() as api:
        response = api.post("/v1/connections", json=body(verify=True))
        error = assert_error(response, 400, "validation_error")
        assert "could not be reached" in error["message"]
        assert_no_secret(response.text)
        assert api.get("/v1/connections").json()["pagination"]["total"] == 0
        assert create(api)["stripe_account_id"] is None
