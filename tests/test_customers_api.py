"""The customer API, as a FlexPrice client uses it, over real HTTP against SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support import DatabaseUnderTest, TenantContext, assert_error, new_tenant

CUSTOMER_KEYS = {
    "id", "external_id", "name", "email", "address_line1", "address_line2", "address_city", "address_state",
    "address_postal_code", "address_country", "metadata", "status", "tenant_id", "environment_id",
    "created_at", "updated_at", "created_by", "updated_by", "parent_customer_id", "parent_customer",
    "timezone", "contact", "contact_persons", "billing_currency", "tax_treatment", "tax_rate_overrides",
    "onboarding_workflow_name",
}  # fmt: skip


def create(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = api.post("/v1/customers", json={"name": "Ada Lovelace", **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def total(api: httpx.Client, **params: Any) -> int:
    count: int = api.get("/v1/customers", params={"status": "all", **params}).json()["pagination"]["total"]
    return count


def test_create_returns_every_flexprice_field(api: httpx.Client, tenant: TenantContext) -> None:
    body = create(
        api,
        external_id="crm-1",
        email="ada@example.com",
        address_line1="12 Analytical Row",
        address_line2="Floor 2",
        address_city="London",
        address_state="Greater London",
        address_postal_code="NW1 6XE",
        address_country="gb",
        metadata={"plan": "pro"},
    )
    assert set(body) == CUSTOMER_KEYS
    assert body["id"].startswith("cust_") and len(body["id"]) == 31
    assert body["address_country"] == "GB"
    assert body["status"] == "published"
    assert body["metadata"] == {"plan": "pro"}
    assert (body["tenant_id"], body["environment_id"]) == (tenant.tenant_id, tenant.environment_id)
    assert body["created_by"].startswith("key_") and body["updated_by"] == body["created_by"]
    assert body["parent_customer_id"] is None and body["parent_customer"] is None
    assert body["created_at"].endswith("Z")
    assert api.get(f"/v1/customers/{body['id']}").json() == body
    assert api.get("/v1/customers/external/crm-1").json() == body


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"external_id": "x"}, "name"),
        ({"name": "No external id"}, "external_id"),
        ({"external_id": "x", "name": "   "}, "name"),
        ({"external_id": "x", "name": "A", "email": "not-an-email"}, "email"),
        ({"external_id": "x", "name": "A", "address_country": "USA"}, "address_country"),
        ({"external_id": "x", "name": "A", "address_country": "zz"}, "address_country"),
        ({"external_id": "x", "name": "A" * 256}, "name"),
        ({"external_id": "x" * 256, "name": "A"}, "external_id"),
        ({"external_id": "x", "name": "A", "address_postal_code": "1" * 21}, "address_postal_code"),
        ({"external_id": "x", "name": "A", "metadata": {"n": 1}}, "metadata.n"),
        ({"external_id": "x", "name": "A", "metadata": ["a"]}, "metadata"),
        ({"external_id": "x", "name": "A", "metadata": {f"k{i}": "v" for i in range(51)}}, "metadata"),
        ({"external_id": "x", "name": "A", "favourite_colour": "blue"}, "favourite_colour"),
        # PostgreSQL's text and JSON cannot hold a NUL character; SQLite could, but both refuse it alike.
        ({"external_id": "x", "name": "Ada\x00"}, "name"),
        ({"external_id": "x\x00", "name": "A"}, "external_id"),
        ({"external_id": "x", "name": "A", "address_line1": "1 Main St\x00"}, "address_line1"),
        ({"external_id": "x", "name": "A", "metadata": {"plan": "pro\x00"}}, "metadata"),
        ({"external_id": "x", "name": "A", "metadata": {"plan\x00": "pro"}}, "metadata"),
        (
            {"external_id": "x", "name": "A", "metadata": {"stripe_customer_id": "cus_1"}},
            "metadata.stripe_customer_id",
        ),
    ],
)
def test_bad_input_is_rejected_and_nothing_written(api: httpx.Client, payload: dict[str, Any], field: str) -> None:
    response = api.post("/v1/customers", json=payload)
    body = assert_error(response, 400, "validation_error")
    assert field in body["details"]["fields"], body
    assert total(api) == 0


def test_a_nul_character_in_a_url_is_refused(api: httpx.Client) -> None:
    created = create(api, external_id="crm-1")
    for response in (
        api.get("/v1/customers/external/crm%00-1"),
        api.get(f"/v1/customers/{created['id']}%00"),
        api.get("/v1/customers", params={"external_id": "crm\x00-1"}),
        api.put("/v1/customers", params={"external_customer_id": "crm-1\x00"}, json={"name": "B"}),
        api.get("/v1/webhook-events", params={"type": "customer.created\x00"}),
    ):
        body = assert_error(response, 400, "validation_error")
        assert "NUL character" in body["message"] and "url" in body["details"]["fields"], body
    assert api.get(f"/v1/customers/{created['id']}").json()["name"] == "Ada Lovelace"


def test_malformed_json_and_non_object_bodies(api: httpx.Client) -> None:
    assert_error(api.post("/v1/customers", content=b"{not json"), 400, "validation_error")
    assert_error(api.post("/v1/customers", content=b"[1, 2]"), 400, "validation_error")
    assert total(api) == 0


def test_body_over_one_mebibyte_is_refused(api: httpx.Client) -> None:
    big = {"external_id": "x", "name": "A", "address_line1": "x" * (1024 * 1024)}
    assert_error(api.post("/v1/customers", json=big), 413, "payload_too_large")


def test_a_method_a_path_does_not_take_is_refused_with_the_methods_it_does(api: httpx.Client) -> None:
    response = api.get("/v1/sync-jobs/job_1/retry")
    assert_error(response, 405, "validation_error")
    assert response.headers["allow"] == "POST"
    assert set(api.request("TRACE", "/healthz").headers["allow"].split(", ")) == {"GET", "HEAD"}
    # Paths that several routes share name all their methods, not only the first route's.
    one = api.patch("/v1/customers/cust_1", json={"name": "A"})
    assert_error(one, 405, "validation_error")
    assert one.headers["allow"] == "DELETE, GET, PUT"
    assert api.delete("/v1/customers").headers["allow"] == "GET, POST, PUT"


def test_duplicate_published_external_id_conflicts_until_archived(api: httpx.Client) -> None:
    first = create(api, external_id="dup")
    assert_error(api.post("/v1/customers", json={"external_id": "dup", "name": "B"}), 409, "already_exists")
    assert api.delete(f"/v1/customers/{first['id']}").status_code == 204
    second = create(api, external_id="dup")
    assert second["id"] != first["id"]
    assert api.get("/v1/customers/external/dup").json()["id"] == second["id"]


def test_concurrent_creates_with_one_external_id_have_one_winner(api: httpx.Client, tenant: TenantContext) -> None:
    def attempt(i: int) -> int:
        with tenant.client() as client:
            return client.post("/v1/customers", json={"external_id": "race", "name": f"R{i}"}).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(attempt, range(20)))
    assert statuses.count(201) == 1, statuses
    assert statuses.count(409) == 19, statuses
    assert total(api, external_id="race") == 1


def test_list_is_newest_first_with_pagination_and_filters(api: httpx.Client) -> None:
    made = [create(api, external_id=f"c{i}", email=f"user{i % 2}@example.com") for i in range(5)]
    page = api.get("/v1/customers", params={"limit": 2, "offset": 1}).json()
    assert page["pagination"] == {"total": 5, "limit": 2, "offset": 1}
    assert [c["id"] for c in page["items"]] == [made[3]["id"], made[2]["id"]]

    default = api.get("/v1/customers").json()
    assert default["pagination"] == {"total": 5, "limit": 50, "offset": 0}
    assert [c["external_id"] for c in default["items"]] == ["c4", "c3", "c2", "c1", "c0"]

    by_ext = api.get("/v1/customers", params={"external_id": "c3"}).json()
    assert [c["id"] for c in by_ext["items"]] == [made[3]["id"]]
    by_email = api.get("/v1/customers", params={"email": "USER1@example.com"}).json()
    assert {c["external_id"] for c in by_email["items"]} == {"c1", "c3"}

    api.delete(f"/v1/customers/{made[0]['id']}")
    assert api.get("/v1/customers").json()["pagination"]["total"] == 4
    archived = api.get("/v1/customers", params={"status": "archived"}).json()
    assert [c["id"] for c in archived["items"]] == [made[0]["id"]]
    assert api.get("/v1/customers", params={"status": "all"}).json()["pagination"]["total"] == 5


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 1001}, {"offset": -1}, {"offset": 2**63}, {"status": "gone"}]
)
def test_list_rejects_bad_paging(api: httpx.Client, params: dict[str, Any]) -> None:
    assert_error(api.get("/v1/customers", params=params), 400, "validation_error")
    # Further than any list reaches, yet within what the databases take: an empty page.
    far = api.get("/v1/customers", params={"offset": 2**63 - 1}).json()
    assert far["items"] == [] and far["pagination"]["offset"] == 2**63 - 1


def test_search_with_flexprice_filter(api: httpx.Client) -> None:
    made = [create(api, external_id=f"s{i}", email=f"s{i}@example.com") for i in range(4)]
    body = api.post("/v1/customers/search", json={"customer_ids": [made[0]["id"], made[2]["id"]]}).json()
    assert [c["id"] for c in body["items"]] == [made[2]["id"], made[0]["id"]]
    body = api.post("/v1/customers/search", json={"external_ids": ["s1", "s3"], "order": "asc"}).json()
    assert [c["external_id"] for c in body["items"]] == ["s1", "s3"]
    body = api.post("/v1/customers/search", json={"email": "s2@example.com"}).json()
    assert [c["external_id"] for c in body["items"]] == ["s2"]
    body = api.post("/v1/customers/search", json={"limit": 1, "offset": 1}).json()
    assert body["pagination"] == {"total": 4, "limit": 1, "offset": 1}
    assert [c["external_id"] for c in body["items"]] == ["s2"]
    body = api.post("/v1/customers/search", json={"sort": [{"field": "external_id", "direction": "desc"}]}).json()
    assert [c["external_id"] for c in body["items"]] == ["s3", "s2", "s1", "s0"]
    assert api.post("/v1/customers/search", json={}).json()["pagination"]["total"] == 4
    assert_error(api.post("/v1/customers/search", json={"limit": 5000}), 400, "validation_error")
    assert_error(api.post("/v1/customers/search", json={"offset": 10**20}), 400, "validation_error")
    assert_error(api.post("/v1/customers/search", json={"colour": "red"}), 400, "validation_error")


def test_search_by_creation_time_takes_any_time_there_is(api: httpx.Client) -> None:
    create(api, external_id="t1")
    for times in (
        {"start_time": "0001-01-01T00:00:00"},  # no offset: UTC
        {"start_time": "0001-01-01T00:00:00+05:00"},  # before the first UTC time there is: from the start
        {"end_time": "9999-12-31T23:59:59-05:00"},  # after the last: to the end
        {"start_time": "2000-01-01", "end_time": "9999-12-31T23:59:59"},
    ):
        response = api.post("/v1/customers/search", json=times)
        assert response.status_code == 200, (times, response.text)
        assert response.json()["pagination"]["total"] == 1, times
    later = api.post("/v1/customers/search", json={"start_time": "9999-01-01T00:00:00"}).json()
    assert later["pagination"]["total"] == 0


def test_partial_update_by_path_and_query(api: httpx.Client) -> None:
    customer = create(api, external_id="u1", email="old@example.com", address_city="Paris", metadata={"a": "1"})
    updated = api.put(f"/v1/customers/{customer['id']}", json={"name": "New Name"}).json()
    assert updated["name"] == "New Name"
    assert updated["email"] == "old@example.com" and updated["address_city"] == "Paris"
    assert updated["metadata"] == {"a": "1"}
    assert updated["updated_at"] >= customer["updated_at"]

    by_id = api.put("/v1/customers", params={"id": customer["id"]}, json={"address_country": "fr"})
    assert by_id.status_code == 200 and by_id.json()["address_country"] == "FR"
    by_ext = api.put("/v1/customers", params={"external_customer_id": "u1"}, json={"email": "new@example.com"})
    assert by_ext.status_code == 200 and by_ext.json()["email"] == "new@example.com"

    replaced = api.put(f"/v1/customers/{customer['id']}", json={"metadata": {"b": "2"}}).json()
    assert replaced["metadata"] == {"b": "2"}
    cleared = api.put(f"/v1/customers/{customer['id']}", json={"address_city": None}).json()
    assert cleared["address_city"] is None

    assert_error(api.put("/v1/customers", json={"name": "x"}), 400, "validation_error")
    both = api.put("/v1/customers", params={"id": customer["id"], "external_customer_id": "u1"}, json={})
    assert_error(both, 400, "validation_error")
    assert_error(api.put(f"/v1/customers/{customer['id']}", json={"name": ""}), 400, "validation_error")
    assert_error(api.put(f"/v1/customers/{customer['id']}", json={"email": "bad@"}), 400, "validation_error")
    assert_error(api.put("/v1/customers/cust_unknown", json={"name": "x"}), 404, "not_found")
    assert api.get(f"/v1/customers/{customer['id']}").json()["name"] == "New Name"


def test_update_external_id_respects_uniqueness(api: httpx.Client) -> None:
    create(api, external_id="taken")
    other = create(api, external_id="free")
    conflict = api.put(f"/v1/customers/{other['id']}", json={"external_id": "taken"})
    assert_error(conflict, 409, "already_exists")
    assert api.get(f"/v1/customers/{other['id']}").json()["external_id"] == "free"
    moved = api.put(f"/v1/customers/{other['id']}", json={"external_id": "renamed"}).json()
    assert moved["external_id"] == "renamed"


def test_sync_owned_metadata_cannot_be_set_by_update(api: httpx.Client) -> None:
    customer = create(api, external_id="m1")
    response = api.put(f"/v1/customers/{customer['id']}", json={"metadata": {"stripe_customer_id": "cus_fake"}})
    assert_error(response, 400, "validation_error")
    assert api.get(f"/v1/customers/{customer['id']}").json()["metadata"] == {}


def test_parent_customer(api: httpx.Client) -> None:
    parent = create(api, external_id="parent")
    child = create(api, external_id="child", parent_customer_external_id="parent")
    assert child["parent_customer_id"] == parent["id"]
    assert_error(
        api.post("/v1/customers", json={"external_id": "c2", "name": "A", "parent_customer_id": "cust_x"}),
        400,
        "validation_error",
    )
    found = api.post("/v1/customers/search", json={"parent_customer_ids": [parent["id"]]}).json()
    assert [c["id"] for c in found["items"]] == [child["id"]]


def test_delete_archives(api: httpx.Client) -> None:
    customer = create(api, external_id="d1")
    response = api.delete(f"/v1/customers/{customer['id']}")
    assert response.status_code == 204 and response.content == b""
    archived = api.get(f"/v1/customers/{customer['id']}")
    assert archived.status_code == 200 and archived.json()["status"] == "archived"
    assert_error(api.get("/v1/customers/external/d1"), 404, "not_found")
    assert api.delete(f"/v1/customers/{customer['id']}").status_code == 204
    assert_error(api.put(f"/v1/customers/{customer['id']}", json={"name": "x"}), 400, "validation_error")
    assert_error(api.delete("/v1/customers/cust_nope"), 404, "not_found")


def test_authentication(anonymous: httpx.Client, tenant: TenantContext) -> None:
    assert_error(anonymous.get("/v1/customers"), 401, "unauthorized")
    assert_error(anonymous.get("/v1/customers", headers={"x-api-key": "fsk_wrong"}), 401, "unauthorized")
    assert_error(anonymous.get("/v1/customers", headers={"Authorization": "Basic abc"}), 401, "unauthorized")
    bearer = anonymous.get("/v1/customers", headers={"Authorization": f"Bearer {tenant.api_key}"})
    assert bearer.status_code == 200


def test_revoked_key_is_refused(database: DatabaseUnderTest, tenant: TenantContext, anonymous: httpx.Client) -> None:
    from sqlalchemy import select

    from flexsync.models import ApiKey
    from flexsync.tenancy.service import hash_api_key, revoke_api_key

    headers = {"x-api-key": tenant.api_key}
    assert anonymous.get("/v1/customers", headers=headers).status_code == 200

    async def revoke(session: Any) -> None:
        key_id = (
            await session.execute(select(ApiKey.id).where(ApiKey.key_hash == hash_api_key(tenant.api_key)))
        ).scalar_one()
        await revoke_api_key(session, key_id)

    database.run(revoke)
    assert_error(anonymous.get("/v1/customers", headers=headers), 401, "unauthorized")


def test_other_tenants_and_environments_are_invisible(
    api: httpx.Client, tenant: TenantContext, database: DatabaseUnderTest
) -> None:
    mine = create(api, external_id="shared-ext")
    other = new_tenant(database, tenant.base_url)

    async def second_env(session: Any) -> TenantContext:
        from flexsync.tenancy import service as tenancy

        env = await tenancy.create_environment(session, tenant.tenant_id, "staging")
        key = await tenancy.create_api_key(session, tenant.tenant_id, env.id)
        return TenantContext(tenant.tenant_id, env.id, key.key, tenant.base_url)

    sibling = database.run(second_env)
    for outsider in (other, sibling):
        with outsider.client() as client:
            assert_error(client.get(f"/v1/customers/{mine['id']}"), 404, "not_found")
            assert_error(client.get("/v1/customers/external/shared-ext"), 404, "not_found")
            assert_error(client.put(f"/v1/customers/{mine['id']}", json={"name": "x"}), 404, "not_found")
            assert_error(client.delete(f"/v1/customers/{mine['id']}"), 404, "not_found")
            assert client.get("/v1/customers").json()["pagination"]["total"] == 0
            assert client.post("/v1/customers/search", json={"customer_ids": [mine["id"]]}).json()["items"] == []
            theirs = client.post("/v1/customers", json={"external_id": "shared-ext", "name": "Theirs"})
            assert theirs.status_code == 201
    assert api.get(f"/v1/customers/{mine['id']}").json()["name"] == "Ada Lovelace"


def test_operations_endpoints(anonymous: httpx.Client, database: DatabaseUnderTest) -> None:
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    assert anonymous.get("/readyz").json() == {"status": "ready", "database": database.backend}
    assert anonymous.head("/healthz").status_code == 200 and anonymous.head("/readyz").status_code == 200
    assert "/v1/customers" in anonymous.get("/openapi.json").json()["paths"]
    assert anonymous.get("/docs").status_code == 200
    metrics = anonymous.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE flexsync_webhook_events_total counter" in metrics.text
