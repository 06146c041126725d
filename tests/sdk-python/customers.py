"""Drives flexsync with FlexPrice's official Python SDK (PyPI `flexprice`), as a FlexPrice user's code would.

Runs in its own environment (tests/sdk-python/.venv, made by scripts/test-setup.sh), never the project's.
Env: FLEXSYNC_URL (e.g. http://127.0.0.1:8000/v1), FLEXSYNC_KEY (an API key), STRIPE_CUSTOMER_ID and
STRIPE_CUSTOMER_ID_2 (existing Stripe customers to link), FLEXSYNC_RUN (makes the external ids unique).
Prints one JSON object per step on stdout: {"step": ..., "result": ...} for a call that succeeded,
{"step": ..., "error": {...}} for a deliberate error. Any unexpected outcome prints
{"step": ..., "unexpected": ...} and exits 1. tests/customers/test_flexprice_python_sdk.py reads the lines.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from flexprice import Flexprice
from flexprice.models.errors import FlexpriceError

client = Flexprice(server_url=os.environ["FLEXSYNC_URL"], api_key_auth=os.environ["FLEXSYNC_KEY"])
customers, integrations = client.customers, client.integrations
run = os.environ["FLEXSYNC_RUN"]
stripe_id, stripe_id_2 = os.environ["STRIPE_CUSTOMER_ID"], os.environ["STRIPE_CUSTOMER_ID_2"]


def dump(result: Any) -> Any:
    if result is None:
        return None
    return result.model_dump(mode="json", by_alias=True) if hasattr(result, "model_dump") else result


def emit(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def step(name: str, call: Callable[[], Any]) -> Any:
    try:
        result = call()
    except Exception as exc:  # whatever the SDK raised is reported for the test to show
        emit({"step": name, "unexpected": describe(exc)})
        sys.exit(1)
    emit({"step": name, "result": dump(result)})
    return result


def describe(exc: Exception) -> dict[str, Any]:
    described: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, FlexpriceError):
        described["status_code"] = exc.status_code
        described["body"] = json.loads(exc.body) if exc.body.startswith("{") else exc.body
    data = getattr(exc, "data", None)
    if data is not None:
        described["data"] = data.model_dump(mode="json")
    return described


def expect_error(name: str, call: Callable[[], Any]) -> None:
    try:
        result = call()
    except Exception as exc:  # the error is the expected outcome
        emit({"step": name, "error": describe(exc)})
        return
    emit({"step": name, "unexpected": {"message": "expected an error, got a result", "result": dump(result)}})
    sys.exit(1)


def condition(field: str, operator: str, data_type: str, **value: Any) -> dict[str, Any]:
    return {"field": field, "operator": operator, "data_type": data_type, "value": value}


started = datetime.now(UTC) - timedelta(seconds=5)
full = step(
    "create",
    lambda: customers.create_customer(
        external_id=f"{run}-grace",
        name="Grace Hopper",
        email="grace@example.com",
        address_line1="1 Compiler Way",
        address_line2="Suite 2",
        address_city="Arlington",
        address_state="VA",
        address_postal_code="22201",
        address_country="us",
        metadata={"plan": "gold", "team": "compilers"},
        timezone="America/New_York",
        contact="+1 555 0100",
        contact_persons=[
            {"first_name": "Grace", "last_name": "Hopper", "email": "grace@example.com", "is_primary": True},
            {"first_name": "Howard", "last_name": "Aiken", "designation": "Director", "department": "Harvard"},
        ],
        billing_currency="usd",
        tax_treatment="exempt",
        tax_rate_overrides=[{"tax_rate_code": "VAT-DE", "currency": "eur", "priority": 1, "tax_behavior": "exclusive"}],
        onboarding_workflow_name="enterprise",
        skip_onboarding_workflow=True,
    ),
)
ada = step(
    "create_second",
    lambda: customers.create_customer(
        external_id=f"{run}-ada", name="Ada Lovelace", email="ada@example.com", metadata={"plan": "gold"}
    ),
)
alan = step(
    "create_third",
    lambda: customers.create_customer(external_id=f"{run}-alan", name="Alan Turing", metadata={"plan": "silver"}),
)
mapped = step(
    "create_with_mapping",
    lambda: customers.create_customer(
        external_id=f"{run}-mapped",
        name="Mapped",
        integration_entity_mapping=[
            {
                "entity_id": f"{run}-mapped",
                "entity_type": "customer",
                "provider_type": "stripe",
                "provider_entity_id": stripe_id_2,
            }
        ],
    ),
)
ids = [full.id, ada.id, alan.id]

step("get", lambda: customers.get_customer(id=full.id))
step("get_by_external_id", lambda: customers.get_customer_by_external_id(external_id=f"{run}-grace"))
step("query_external_id", lambda: customers.query_customer(external_id=f"{run}-grace", limit=10, offset=0))
step("query_external_ids", lambda: customers.query_customer(external_ids=[f"{run}-ada", f"{run}-alan"]))
step("query_customer_ids", lambda: customers.query_customer(customer_ids=[ada.id]))
step("query_email", lambda: customers.query_customer(email="ada@example.com"))
step("query_metadata", lambda: customers.query_customer(customer_ids=ids, metadata={"plan": "gold"}))
step(
    "query_metadata_pairs",
    lambda: customers.query_customer(customer_ids=ids, metadata={"plan": "gold", "team": "compilers"}),
)
step(
    "query_filter_contains",
    lambda: customers.query_customer(filters=[condition("name", "contains", "string", string="LOVE")]),
)
step(
    "query_filter_in",
    lambda: customers.query_customer(
        filters=[condition("external_id", "in", "array", array=[f"{run}-ada", f"{run}-alan", "nobody"])]
    ),
)
step(
    "query_filter_after",
    lambda: customers.query_customer(
        customer_ids=ids, filters=[condition("created_at", "after", "date", date=started.isoformat())]
    ),
)
step(
    "query_filter_eq_timezone",
    lambda: customers.query_customer(filters=[condition("timezone", "eq", "string", string="America/New_York")]),
)
step(
    "query_sort",
    lambda: customers.query_customer(
        customer_ids=ids, sort=[{"field": "email", "direction": "desc"}, {"field": "name", "direction": "asc"}]
    ),
)
step("query_page_1", lambda: customers.query_customer(customer_ids=ids, order="asc", limit=2, offset=0))
step("query_page_2", lambda: customers.query_customer(customer_ids=ids, order="asc", limit=2, offset=2))
step(
    "query_time_range",
    lambda: customers.query_customer(
        customer_ids=ids, start_time=started, end_time=datetime.now(UTC) + timedelta(minutes=5)
    ),
)
step(
    "query_before_range",
    lambda: customers.query_customer(customer_ids=ids, end_time=started - timedelta(days=1)),
)

step(
    "update_by_id",
    lambda: customers.update_customer(
        id=full.id, name="Rear Admiral Hopper", metadata={"plan": "platinum"}, timezone="Europe/Berlin"
    ),
)
step(
    "update_by_external_id",
    lambda: customers.update_customer(
        external_customer_id=f"{run}-grace", email="hopper@example.com", billing_currency="EUR", tax_treatment="taxable"
    ),
)

step(
    "link",
    lambda: integrations.link_integration_mapping(
        entity_id=ada.id, entity_type="customer", provider_type="stripe", provider_entity_id=stripe_id
    ),
)
step("mappings", lambda: integrations.get_entity_integration_mappings(entity_type="customer", entity_id=ada.id))
step("query_expand", lambda: customers.query_customer(customer_ids=[ada.id], expand="integrations"))
expect_error(
    "link_taken",
    lambda: integrations.link_integration_mapping(
        entity_id=alan.id, entity_type="customer", provider_type="stripe", provider_entity_id=stripe_id
    ),
)
expect_error(
    "link_missing_stripe_customer",
    lambda: integrations.link_integration_mapping(
        entity_id=alan.id, entity_type="customer", provider_type="stripe", provider_entity_id="cus_doesnotexist"
    ),
)
step(
    "delink",
    lambda: integrations.delink_integration_mapping(entity_id=ada.id, entity_type="customer", provider_type="stripe"),
)
step(
    "mappings_after_delink",
    lambda: integrations.get_entity_integration_mappings(entity_type="customer", entity_id=ada.id),
)
expect_error(
    "delink_again",
    lambda: integrations.delink_integration_mapping(entity_id=ada.id, entity_type="customer", provider_type="stripe"),
)

expect_error("create_duplicate", lambda: customers.create_customer(external_id=f"{run}-grace", name="Someone"))
expect_error(
    "create_bad_email", lambda: customers.create_customer(external_id=f"{run}-x", name="X", email="not-an-email")
)
expect_error(
    "create_bad_timezone",
    lambda: customers.create_customer(external_id=f"{run}-x", name="X", timezone="Mars/Olympus_Mons"),
)
expect_error(
    "create_bad_currency", lambda: customers.create_customer(external_id=f"{run}-x", name="X", billing_currency="ABC")
)
expect_error(
    "create_two_primaries",
    lambda: customers.create_customer(
        external_id=f"{run}-x",
        name="X",
        contact_persons=[{"first_name": "A", "is_primary": True}, {"first_name": "B", "is_primary": True}],
    ),
)
expect_error(
    "query_unknown_field", lambda: customers.query_customer(filters=[condition("colour", "eq", "string", string="x")])
)
expect_error(
    "query_unknown_operator",
    lambda: customers.query_customer(filters=[condition("name", "gt", "number", number=3)]),
)
expect_error("query_unknown_sort", lambda: customers.query_customer(sort=[{"field": "colour", "direction": "asc"}]))
expect_error("query_bad_expand", lambda: customers.query_customer(expand="subscriptions"))
expect_error("get_missing", lambda: customers.get_customer(id="cust_doesnotexist"))
expect_error("update_missing", lambda: customers.update_customer(id="cust_doesnotexist", name="X"))

step("delete", lambda: customers.delete_customer(id=alan.id))
step("get_archived", lambda: customers.get_customer(id=alan.id))
step("query_archived", lambda: customers.query_customer(customer_ids=ids, status="archived"))
step("query_deleted", lambda: customers.query_customer(customer_ids=ids, status="deleted"))
step("query_published", lambda: customers.query_customer(customer_ids=ids, status="published"))
