"""/openapi.json tells the truth, over real HTTP to `flexsync serve`, on SQLite and PostgreSQL: schemathesis reads
the running server's document, generates requests for every operation from it alone, and checks that every answer
is one the document lists for the operation (status, content type, body schema), never a server error."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode

from tests.support import (
    DatabaseUnderTest,
    Server,
    TenantContext,
    assert_error,
    new_tenant,
)
from tests.webhook_support import WEBHOOK_SECRET, sign, stripe_customer, stripe_event

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance")

# Per operation: about twenty seconds per backend in all.
FUZZING = settings(
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def fresh_tenant(database: DatabaseUnderTest, server: Server) -> TenantContext:
    return new_tenant(database, server.base_url)


@pytest.fixture(scope="module")
def api_schema(server: Server, fresh_tenant: TenantContext) -> schemathesis.BaseSchema:
    """The running server's own document; requests carry the fresh tenant's key."""
    config = schemathesis.Config.from_dict(
        {
            "headers": {"x-api-key": fresh_tenant.api_key},
            "checks": {"enabled": False} | {name: {"enabled": True} for name in CHECKS},
        }
    )
    return schemathesis.openapi.from_url(f"{server.base_url}/openapi.json", config=config)


INTEGRATIONS = {"expand": "integrations"}


class DocumentedAPI:
    """An API client whose every answer must have the status expected and be one the document lists."""

    def __init__(self, schema: schemathesis.BaseSchema, client: httpx.Client) -> None:
        self.schema = schema
        self.client = client

    def __call__(self, method: str, path: str, expected: int, /, **kwargs: Any) -> Any:
        """`path` is the document's template, filled from `kwargs` (e.g. customer_id=...); the JSON answer."""
        parameters = {name: kwargs.pop(name) for name in re.findall(r"{(\w+)}", path)}
        response = self.client.request(method, path.format(**parameters), **kwargs)
        assert response.status_code == expected, response.text
        self.schema[path][method].Case(path_parameters=parameters).validate_response(response)
        return response.json() if response.content else None


EVERY_CUSTOMER_FIELD = {
    "external_id": "crm-1",
    "name": "Ada",
    "email": "a@b.co",
    "address_line1": "12 Analytical Row",
    "address_country": "GB",
    "metadata": {"plan": "gold"},
    "timezone": "Europe/London",
    "contact": "+44 20 7946 0000",
    "contact_persons": [{"first_name": "Ada", "last_name": "Lovelace", "email": "ada@b.co", "is_primary": True}],
    "billing_currency": "gbp",
    "tax_treatment": "taxable",
    "tax_rate_overrides": [{"tax_rate_code": "VAT-GB", "currency": "gbp", "tax_behavior": "inclusive"}],
    "onboarding_workflow_name": "default",
    "skip_onboarding_workflow": True,
}


@pytest.fixture(scope="module")
def real_ids(api_schema: schemathesis.BaseSchema, fresh_tenant: TenantContext) -> dict[str, str]:
    """One of each object in the fresh tenant, made through the API (so lists answer items, not only empty
    pages), by the names of the path parameters that take their ids."""
    with fresh_tenant.client() as client:
        api = DocumentedAPI(api_schema, client)
        keys = {"secret_key": "sk_test_openapi0000", "publishable_key": "pk_test_openapi0000"}
        connection = api(
            "POST", "/v1/connections", 201, json={"name": "Stripe", **keys, "webhook_secret": WEBHOOK_SECRET}
        )
        customer = api("POST", "/v1/customers", 201, json=EVERY_CUSTOMER_FIELD)
        sync = api("POST", "/v1/customers/{customer_id}/sync-to-stripe", 202, customer_id=customer["id"])
        event = json.dumps(stripe_event("customer.created", stripe_customer())).encode()
        webhook = "/v1/webhooks/stripe/{tenant_id}/{environment_id}"
        scope = {"tenant_id": fresh_tenant.tenant_id, "environment_id": fresh_tenant.environment_id}
        for status in ("applied", "duplicate"):
            answer = api("POST", webhook, 200, **scope, content=event, headers={"stripe-signature": sign(event)})
            assert answer["status"] == status
        run = api("POST", "/v1/connections/{connection_id}/reconcile", 202, connection_id=connection["id"], json={})
        stored_event = api("GET", "/v1/webhook-events", 200)["items"][0]
    return {
        **scope,
        "customer_id": customer["id"],
        "external_id": customer["external_id"],
        "job_id": sync["job_id"],
        "connection_id": connection["id"],
        "event_id": stored_event["id"],
        "run_id": run["id"],
        # The customer the applied event made from Stripe, linked by the sync.
        "linked_customer_id": stored_event["customer_id"],
    }


def test_real_objects_are_answered_as_documented(
    api_schema: schemathesis.BaseSchema, fresh_tenant: TenantContext, real_ids: dict[str, str]
) -> None:
    with fresh_tenant.client() as client:
        api = DocumentedAPI(api_schema, client)
        for path in ("/v1/customers", "/v1/sync-jobs", "/v1/connections", "/v1/webhook-events", "/v1/reconciliations"):
            assert api("GET", path, 200)["items"], path
        customer_id = real_ids["customer_id"]
        api("GET", "/v1/customers/{customer_id}", 200, customer_id=customer_id)
        api("GET", "/v1/customers/external/{external_id}", 200, external_id=real_ids["external_id"])
        api("PUT", "/v1/customers/{customer_id}", 200, customer_id=customer_id, json={"address_line1": "1 Main St"})
        assert api("GET", "/v1/customers/{customer_id}/sync", 200, customer_id=customer_id)["pending_jobs"]
        search = {
            "metadata": {"plan": "gold"},
            "filters": [{"field": "name", "operator": "contains", "data_type": "string", "value": {"string": "ad"}}],
            "sort": [{"field": "timezone", "direction": "desc"}, {"field": "name"}],
            "expand": "integrations",
            "status": "all",
        }
        assert api("POST", "/v1/customers/search", 200, json=search)["items"][0]["contact_persons"]
        linked_id = real_ids["linked_customer_id"]
        expanded = api("GET", "/v1/customers/{customer_id}", 200, customer_id=linked_id, params=INTEGRATIONS)
        assert expanded["integrations"][0]["provider_type"] == "stripe"
        mapped = {"entity_type": "customer", "entity_id": linked_id}
        assert api("GET", "/v1/integrations/mappings", 200, params=mapped)["items"]
        link = {**mapped, "provider_type": "stripe", "provider_entity_id": "cus_openapi"}
        # Stripe cannot be reached here; the linked customer's link is a conflict before Stripe is asked.
        unreachable = api("POST", "/v1/integrations/link", 400, json={**link, "entity_id": customer_id})
        assert "could not reach Stripe" in unreachable["message"]
        api("POST", "/v1/integrations/link", 409, json=link)
        api(
            "DELETE", "/v1/integrations/link", 404, json={**mapped, "entity_id": customer_id, "provider_type": "stripe"}
        )
        api("GET", "/v1/sync-jobs/{job_id}", 200, job_id=real_ids["job_id"])
        # Only a failed job can be retried: 400, as documented.
        api("POST", "/v1/sync-jobs/{job_id}/retry", 400, job_id=real_ids["job_id"])
        api("GET", "/v1/connections/{connection_id}", 200, connection_id=real_ids["connection_id"])
        api("PUT", "/v1/connections/{connection_id}", 200, connection_id=real_ids["connection_id"], json={"name": "S"})
        assert api("GET", "/v1/webhook-events/{event_id}", 200, event_id=real_ids["event_id"])["payload"]
        api("POST", "/v1/webhook-events/{event_id}/replay", 200, event_id=real_ids["event_id"])
        api("GET", "/v1/reconciliations/{run_id}", 200, run_id=real_ids["run_id"])
        api("GET", "/healthz", 200)
        api("GET", "/readyz", 200)
        assert "flexsync_webhook_events_total" in client.get("/metrics").text


def test_deletions_are_answered_without_a_body(
    api_schema: schemathesis.BaseSchema, database: DatabaseUnderTest, server: Server
) -> None:
    # A tenant of its own: the fuzzing below still needs the seeded objects.
    with new_tenant(database, server.base_url).client() as client:
        api = DocumentedAPI(api_schema, client)
        keys = {"secret_key": "sk_test_openapi0000", "publishable_key": "pk_test_openapi0000"}
        connection = api("POST", "/v1/connections", 201, json={"name": "Stripe", **keys})
        customer = api("POST", "/v1/customers", 201, json={"external_id": "crm-2", "name": "Grace"})
        assert api("DELETE", "/v1/customers/{customer_id}", 204, customer_id=customer["id"]) is None
        assert api("DELETE", "/v1/connections/{connection_id}", 204, connection_id=connection["id"]) is None
        api("GET", "/v1/connections/{connection_id}", 404, connection_id=connection["id"])


def test_the_documented_formats_are_the_ones_the_api_takes(database: DatabaseUnderTest, server: Server) -> None:
    """The key and country formats the document states, against what the API accepts and refuses."""
    tenant = new_tenant(database, server.base_url)
    with tenant.client() as client:
        schemas = client.get("/openapi.json").json()["components"]["schemas"]
        connection, customer = schemas["ConnectionCreate"]["properties"], schemas["CustomerCreate"]["properties"]
        keys = {"name": "Stripe", "secret_key": "sk_test_fmt1", "publishable_key": "pk_test_fmt1"}
        cases = [
            (connection, "secret_key", "rk_test_fmt2", "pk_test_fmt2"),
            (connection, "publishable_key", "pk_test_fmt3", "sk_test_fmt3"),
            (connection, "webhook_secret", "whsec_fmt+4/=", "wh_fmt4"),
            (customer, "address_country", "de", "DEU"),
            (customer, "billing_currency", "eur", "EURO"),
        ]
        for properties, field, accepted, refused in cases:
            pattern = properties[field].get("pattern") or properties[field]["anyOf"][0]["pattern"]
            assert re.search(pattern, accepted) and not re.search(pattern, refused), field
            if properties is connection:
                good = client.post("/v1/connections", json={**keys, field: accepted})
                bad = client.post("/v1/connections", json={**keys, field: refused})
                if good.status_code == 201:
                    client.delete(f"/v1/connections/{good.json()['id']}")
            else:
                good = client.post("/v1/customers", json={"external_id": f"fmt-{field}", "name": "A", field: accepted})
                bad = client.post("/v1/customers", json={"external_id": "fmt-bad", "name": "A", field: refused})
            assert good.status_code == 201, (field, good.text)
            assert_error(bad, 400, "validation_error")
            assert field in bad.json()["details"]["fields"], (field, bad.text)


def test_null_is_refused_exactly_where_the_document_says_a_field_is_not_nullable(
    database: DatabaseUnderTest, server: Server
) -> None:
    """Partial updates: a field the document shows without `null` may be left out, but sent as null answers 400
    naming it; a field shown with `null` takes it (200)."""
    tenant = new_tenant(database, server.base_url)
    with tenant.client() as client:
        schemas = client.get("/openapi.json").json()["components"]["schemas"]
        keys = {"secret_key": "sk_test_null1", "publishable_key": "pk_test_null1", "webhook_secret": WEBHOOK_SECRET}
        connection = client.post("/v1/connections", json={"name": "Stripe", **keys})
        customer = client.post("/v1/customers", json={"external_id": "null-1", "name": "Ada"})
        assert (connection.status_code, customer.status_code) == (201, 201)
        updates = {
            "ConnectionUpdate": f"/v1/connections/{connection.json()['id']}",
            "CustomerUpdate": f"/v1/customers/{customer.json()['id']}",
        }
        checked = {True: [], False: []}
        for model, url in updates.items():
            for field, schema in schemas[model]["properties"].items():
                nullable = any(branch.get("type") == "null" for branch in schema.get("anyOf", []))
                answer = client.put(url, json={field: None})
                if nullable:
                    assert answer.status_code == 200, (model, field, answer.text)
                else:
                    assert_error(answer, 400, "validation_error")
                    assert field in answer.json()["details"]["fields"], (model, field, answer.text)
                checked[nullable].append(f"{model}.{field}")
        assert {"CustomerUpdate.name", "ConnectionUpdate.secret_key"} <= set(checked[False]), checked
        assert {"CustomerUpdate.email", "ConnectionUpdate.webhook_secret"} <= set(checked[True]), checked
        assert {"CustomerUpdate.timezone", "CustomerUpdate.contact_persons"} <= set(checked[True]), checked


def test_every_operation_has_an_id_of_its_own_and_may_answer_503(server: Server) -> None:
    """Client generators name their methods after operation ids and refuse duplicates; every /v1/ operation
    documents the 503 (database busy or away) with its Retry-After."""
    document = httpx.get(f"{server.base_url}/openapi.json", timeout=30).json()
    operations = [(path, operation) for path, item in document["paths"].items() for operation in item.values()]
    ids = [operation["operationId"] for _, operation in operations]
    assert len(ids) == len(set(ids)), sorted(ids)
    for path, operation in operations:
        if path.startswith("/v1/"):
            assert "Retry-After" in operation["responses"]["503"]["headers"], path


def test_every_write_documents_its_idempotency_key(server: Server) -> None:
    """Every /v1/ POST, PUT and DELETE but Stripe's webhook takes an Idempotency-Key; its answers say when they
    are replayed, and its errors include idempotency_error."""
    document = httpx.get(f"{server.base_url}/openapi.json", timeout=30).json()
    writes = 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            parameters = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "header"}
            takes_key = path.startswith("/v1/") and method in ("post", "put", "delete") and "webhooks" not in path
            assert ("Idempotency-Key" in parameters) == takes_key, (method, path)
            if not takes_key:
                continue
            writes += 1
            assert parameters["Idempotency-Key"]["schema"]["maxLength"] == 255
            assert "idempotency_error" in operation["responses"]["400"]["description"], (method, path)
            assert "idempotency_error" in operation["responses"]["409"]["description"], (method, path)
            success = [r for status, r in operation["responses"].items() if status.startswith("2")]
            assert all("Idempotent-Replayed" in r["headers"] for r in success), (method, path)
    assert writes >= 10


def test_the_api_key_is_required_where_documented_and_only_there(server: Server) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as anonymous:
        document = anonymous.get("/openapi.json").json()
        assert set(document["components"]["securitySchemes"]) == {"ApiKey", "Bearer"}
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                response = anonymous.request(method, re.sub(r"{\w+}", "x", path))
                if "security" in operation:
                    assert_error(response, 401, "unauthorized")
                else:
                    assert response.status_code != 401, (method, path)


def test_every_operation_answers_as_documented(
    api_schema: schemathesis.BaseSchema, real_ids: dict[str, str], subtests: pytest.Subtests
) -> None:
    """Valid and invalid requests, with made-up ids and with the real objects' ids; deletions last, so the
    other operations still find the objects."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    for operation in sorted(operations, key=lambda operation: operation.method.upper() == "DELETE"):
        strategies = [operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)]
        if real := {name: real_ids[name] for name in re.findall(r"{(\w+)}", operation.path)}:
            strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=real))
        cases = st.one_of(strategies)

        @FUZZING
        @given(case=cases)
        def answers_as_documented(case: Case) -> None:
            case.call_and_validate()

        with subtests.test(operation.label):
            answers_as_documented()
