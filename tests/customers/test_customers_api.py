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


def search(api: httpx.Client, **body: Any) -> list[str]:
    """The external ids a search finds, in order."""
    response = api.post("/v1/customers/search", json=body)
    assert response.status_code == 200, (body, response.text)
    return [c["external_id"] for c in response.json()["items"]]


def condition(field: str, operator: str, data_type: str, **value: Any) -> dict[str, Any]:
    return {"field": field, "operator": operator, "data_type": data_type, "value": value}


def test_search_by_metadata_pairs(api: httpx.Client) -> None:
    create(api, external_id="m1", metadata={"plan": "gold", "region": "eu"})
    create(api, external_id="m2", metadata={"plan": "gold"})
    create(api, external_id="m3", metadata={"plan": "silver", "region": "eu"})
    # Keys a JSON path would need quoting for, and values that look like other JSON.
    create(api, external_id="m4", metadata={'odd "key".$[0]': "1", "n": "true"})
    assert search(api, metadata={"plan": "gold"}, order="asc") == ["m1", "m2"]
    assert search(api, metadata={"plan": "gold", "region": "eu"}) == ["m1"]
    assert search(api, metadata={"region": "eu"}, order="asc") == ["m1", "m3"]
    assert search(api, metadata={"plan": "platinum"}) == []
    assert search(api, metadata={'odd "key".$[0]': "1"}) == ["m4"]
    assert search(api, metadata={"n": "true"}) == ["m4"]
    assert search(api, metadata={"plan": "Gold"}) == []
    assert len(search(api, metadata={})) == 4
    assert_error(api.post("/v1/customers/search", json={"metadata": {"plan": 1}}), 400, "validation_error")


def test_search_with_flexprice_filter_conditions(api: httpx.Client) -> None:
    create(api, external_id="f1", name="Ada Lovelace", email="ada@example.com", timezone="Europe/London")
    create(api, external_id="f2", name="Alan Turing", email="alan@example.org", billing_currency="GBP")
    create(api, external_id="f3", name="Grace Hopper", contact="+1 555 0100")
    since = api.get("/v1/customers/external/f2").json()["created_at"]

    def found(*conditions: dict[str, Any]) -> list[str]:
        return search(api, filters=list(conditions), order="asc")

    assert found(condition("name", "eq", "string", string="Alan Turing")) == ["f2"]
    assert found(condition("name", "contains", "string", string="LOVE")) == ["f1"]
    assert found(condition("email", "contains", "string", string="%")) == []  # LIKE's wildcards are plain text
    assert found(condition("email", "not_contains", "string", string="example.com")) == ["f2", "f3"]
    assert found(condition("external_id", "in", "array", array=["f1", "f3", "nobody"])) == ["f1", "f3"]
    assert found(condition("email", "not_in", "array", array=["ada@example.com"])) == ["f2", "f3"]
    assert found(condition("timezone", "eq", "string", string="UTC")) == ["f2", "f3"]
    assert found(condition("billing_currency", "eq", "string", string="gbp")) == ["f2"]
    assert found(condition("contact", "contains", "string", string="555")) == ["f3"]
    assert found(condition("created_at", "after", "date", date="2000-01-01T00:00:00Z")) == ["f1", "f2", "f3"]
    assert found(condition("created_at", "before", "date", date="2000-01-01T00:00:00Z")) == []
    assert found(condition("created_at", "gte", "date", date=since)) == ["f2", "f3"]
    assert found(condition("created_at", "gt", "date", date=since)) == ["f3"]
    assert found(condition("created_at", "lt", "date", date=since)) == ["f1"]
    assert found(condition("created_at", "eq", "date", date=since)) == ["f2"]
    # The data type may be left out: the operator says which value it takes.
    assert found({"field": "name", "operator": "contains", "value": {"string": "hopper"}}) == ["f3"]
    # Conditions add up, with each other and with the other filters.
    both = [
        condition("name", "contains", "string", string="a"),
        condition("email", "contains", "string", string=".org"),
    ]
    assert found(*both) == ["f2"]
    assert search(api, external_ids=["f1", "f2"], filters=[condition("name", "contains", "string", string="t")]) == [
        "f2"
    ]


@pytest.mark.parametrize(
    ("conditions", "path", "says"),
    [
        ([condition("colour", "eq", "string", string="red")], "filters.0.field", "unknown customer field 'colour'"),
        ([condition("metadata", "eq", "string", string="x")], "filters.0.field", "filter metadata with `metadata`"),
        ([condition("name", "gt", "number", number=3)], "filters.0.operator", "'gt' does not apply to name"),
        ([condition("name", "starts_with", "string", string="A")], "filters.0.operator", "'starts_with'"),
        ([condition("created_at", "contains", "string", string="2")], "filters.0.operator", "a time"),
        ([condition("name", "in", "string", string="A")], "filters.0.data_type", "takes data_type array"),
        ([condition("name", "eq", "string", number=1)], "filters.0.value.string", "required"),
        ([{"operator": "eq", "value": {"string": "x"}}], "filters.0.field", "required"),
        ([{"field": "name", "value": {"string": "x"}}], "filters.0.operator", "required"),
        (
            [condition("name", "eq", "string", string="A"), condition("email", "in", "array")],
            "filters.1.value.array",
            "required",
        ),
    ],
)
def test_search_refuses_conditions_it_cannot_apply(
    api: httpx.Client, conditions: list[dict[str, Any]], path: str, says: str
) -> None:
    error = assert_error(api.post("/v1/customers/search", json={"filters": conditions}), 400, "validation_error")
    assert list(error["details"]["fields"]) == [path]
    assert says in error["message"], error["message"]


def test_search_sorts_by_several_fields(api: httpx.Client) -> None:
    create(api, external_id="o1", name="Beta", email="b@example.com")
    create(api, external_id="o2", name="Alpha", email="b@example.com")
    create(api, external_id="o3", name="Alpha")
    create(api, external_id="o4", name="Gamma", email="a@example.com")
    by_email_then_name = [{"field": "email", "direction": "asc"}, {"field": "name", "direction": "desc"}]
    # Customers without an email come last going up and first going down, on both databases.
    assert search(api, sort=by_email_then_name) == ["o4", "o1", "o2", "o3"]
    by_name = [{"field": "name"}, {"field": "email", "direction": "desc"}]
    assert search(api, sort=by_name) == ["o3", "o2", "o1", "o4"]
    # Ties left by the sort keep `order` by creation.
    assert search(api, sort=[{"field": "name", "direction": "asc"}], order="desc")[:2] == ["o3", "o2"]
    assert search(api, sort=[{"field": "timezone"}], order="asc") == ["o1", "o2", "o3", "o4"]
    error = assert_error(
        api.post("/v1/customers/search", json={"sort": [{"field": "name"}, {"field": "colour"}]}),
        400,
        "validation_error",
    )
    assert list(error["details"]["fields"]) == ["sort.1.field"]
    bad_direction = {"sort": [{"field": "name", "direction": "up"}]}
    assert_error(api.post("/v1/customers/search", json=bad_direction), 400, "validation_error")


def test_search_status_time_range_and_expand(api: httpx.Client) -> None:
    kept, archived = create(api, external_id="st1"), create(api, external_id="st2")
    api.delete(f"/v1/customers/{archived['id']}")
    assert search(api) == ["st1"]
    assert search(api, status="published") == ["st1"]
    assert search(api, status="archived") == ["st2"]
    assert search(api, status="all", order="asc") == ["st1", "st2"]
    # FlexPrice's `deleted`: deleting archives, so no customer is ever deleted.
    assert search(api, status="deleted") == []
    assert_error(api.post("/v1/customers/search", json={"status": "gone"}), 400, "validation_error")
    # Empty id lists filter nothing out, as in FlexPrice.
    assert search(api, customer_ids=[], external_ids=[]) == ["st1"]

    backwards = {"start_time": "2030-01-01T00:00:00Z", "end_time": "2020-01-01T00:00:00Z"}
    error = assert_error(api.post("/v1/customers/search", json=backwards), 400, "validation_error")
    assert error["details"]["fields"] == {"end_time": "must not be before start_time"}

    expanded = api.post("/v1/customers/search", json={"expand": "integrations"}).json()["items"]
    assert [c["integrations"] for c in expanded] == [[]]
    assert api.get(f"/v1/customers/{kept['id']}", params={"expand": "integrations"}).json()["integrations"] == []
    for bad in ("subscriptions", "integrations.plans"):
        error = assert_error(api.post("/v1/customers/search", json={"expand": bad}), 400, "validation_error")
        assert "cannot be expanded" in error["message"]
    assert_error(api.get(f"/v1/customers/{kept['id']}", params={"expand": "wallet"}), 400, "validation_error")
    external = api.get("/v1/customers/external/st1", params={"expand": "integrations"})
    assert external.json()["integrations"] == []


def test_flexprice_billing_fields_are_kept_and_returned(api: httpx.Client) -> None:
    person = {"first_name": "Grace", "last_name": "Hopper", "email": "Grace@Example.com", "is_primary": True}
    override = {"tax_rate_code": "VAT-DE", "currency": "EUR", "priority": 2, "tax_behavior": "inclusive"}
    body = create(
        api,
        external_id="b1",
        timezone="Asia/Kolkata",
        contact=" +91 80 1234 5678 ",
        contact_persons=[person, {"first_name": "Howard", "mobile": "+1 555 0101"}],
        billing_currency="Inr",
        tax_treatment="taxable",
        tax_rate_overrides=[override],
        onboarding_workflow_name="enterprise",
        skip_onboarding_workflow=True,
    )
    assert body["timezone"] == "Asia/Kolkata" and body["contact"] == "+91 80 1234 5678"
    assert body["contact_persons"] == [
        {"first_name": "Grace", "last_name": "Hopper", "email": "Grace@example.com", "is_primary": True},
        {"first_name": "Howard", "mobile": "+1 555 0101", "is_primary": False},
    ]
    assert (body["billing_currency"], body["tax_treatment"]) == ("inr", "taxable")
    assert body["tax_rate_overrides"] == [
        {"tax_rate_code": "VAT-DE", "currency": "eur", "priority": 2, "auto_apply": True, "tax_behavior": "inclusive"}
    ]
    assert body["onboarding_workflow_name"] == "enterprise"
    assert api.get(f"/v1/customers/{body['id']}").json() == body

    plain = create(api, external_id="b2")
    assert (plain["timezone"], plain["contact_persons"], plain["tax_rate_overrides"]) == ("UTC", [], [])
    assert plain["contact"] is None and plain["billing_currency"] is None and plain["tax_treatment"] is None

    updated = api.put(
        f"/v1/customers/{body['id']}", json={"timezone": "", "contact_persons": [], "billing_currency": "usd"}
    ).json()
    assert (updated["timezone"], updated["contact_persons"], updated["billing_currency"]) == ("UTC", [], "usd")
    assert updated["contact"] == "+91 80 1234 5678" and updated["tax_rate_overrides"] == body["tax_rate_overrides"]
    unchanged = api.put(f"/v1/customers/{body['id']}", json={"timezone": "UTC"}).json()
    assert unchanged["updated_at"] == updated["updated_at"]


OVERRIDE = {"tax_rate_code": "X", "currency": "usd"}


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": "utc"}, "timezone"),
        ({"billing_currency": "ABC"}, "billing_currency"),
        ({"billing_currency": "XAU"}, "billing_currency"),
        ({"billing_currency": "dollars"}, "billing_currency"),
        ({"contact": "1" * 21}, "contact"),
        ({"tax_treatment": "reverse"}, "tax_treatment"),
        ({"contact_persons": [{"last_name": "No first name"}]}, "contact_persons.0.first_name"),
        ({"contact_persons": [{"first_name": "A", "email": "nope"}]}, "contact_persons.0.email"),
        ({"contact_persons": [{"first_name": "A", "is_primary": True}] * 2}, "contact_persons"),
        ({"contact_persons": [{"first_name": "A", "age": 3}]}, "contact_persons.0.age"),
        ({"tax_rate_overrides": [{"tax_rate_code": "X"}]}, "tax_rate_overrides.0.currency"),
        ({"tax_rate_overrides": [{**OVERRIDE, "priority": -1}]}, "tax_rate_overrides.0.priority"),
        ({"tax_rate_overrides": [{**OVERRIDE, "tax_behavior": "both"}]}, "tax_rate_overrides.0.tax_behavior"),
        ({"tax_rate_overrides": [{**OVERRIDE, "currency": "usdollar"}]}, "tax_rate_overrides.0.currency"),
    ],
)  # fmt: skip
def test_billing_fields_follow_flexprices_rules(api: httpx.Client, fields: dict[str, Any], path: str) -> None:
    response = api.post("/v1/customers", json={"external_id": "bad", "name": "Bad", **fields})
    error = assert_error(response, 400, "validation_error")
    assert path in error["details"]["fields"], error
    assert total(api) == 0


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
