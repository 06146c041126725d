"""The seed's two mapping tables, both ways, on the pure mapping module (no I/O)."""

from __future__ import annotations

from typing import Any

from flexsync.stripe.mapping import differs, from_stripe, to_stripe

FLEXSYNC_CUSTOMER: dict[str, Any] = {
    "id": "cust_01ABC",
    "external_id": "crm-7",
    "name": "Grace Hopper",
    "email": "grace@example.com",
    "address_line1": "1 Navy Way",
    "address_line2": "Suite 2",
    "address_city": "Arlington",
    "address_state": "VA",
    "address_postal_code": "22202",
    "address_country": "US",
}


def test_flexsync_to_stripe_create_carries_every_mapped_field_and_the_metadata() -> None:
    params = to_stripe(FLEXSYNC_CUSTOMER, environment_id="env_prod")
    assert params["name"] == "Grace Hopper"
    assert params["email"] == "grace@example.com"
    assert params["address"] == {
        "line1": "1 Navy Way",
        "line2": "Suite 2",
        "city": "Arlington",
        "state": "VA",
        "postal_code": "22202",
        "country": "US",
    }
    assert params["metadata"] == {
        "flexprice_customer_id": "cust_01ABC",
        "flexprice_environment": "env_prod",
        "external_id": "crm-7",
    }


def test_flexsync_to_stripe_update_clears_what_flexsync_no_longer_has() -> None:
    sparse = {**FLEXSYNC_CUSTOMER, "email": None, **{k: None for k in FLEXSYNC_CUSTOMER if k.startswith("address")}}
    create = to_stripe(sparse, environment_id="env_prod")
    assert "email" not in create and "address" not in create
    update = to_stripe(sparse, environment_id="env_prod", for_update=True)
    assert update["email"] == "" and update["address"] == ""


def test_stripe_to_flexsync_maps_the_seed_table() -> None:
    inbound = from_stripe(
        {
            "id": "cus_123",
            "name": "Grace Hopper",
            "email": "grace@example.com",
            "address": {
                "line1": "1 Navy Way",
                "line2": "Suite 2",
                "city": "Arlington",
                "state": "VA",
                "postal_code": "22202",
                "country": "us",
            },
            "metadata": {"flexprice_customer_id": "cust_01ABC", "other": "not copied"},
        }
    )
    assert inbound.stripe_id == "cus_123"
    assert inbound.flexprice_customer_id == "cust_01ABC"
    assert inbound.problems == []
    assert inbound.fields == {k: v for k, v in FLEXSYNC_CUSTOMER.items() if k not in ("id", "external_id")}
    assert "other" not in inbound.fields


def test_round_trip_changes_nothing() -> None:
    params = to_stripe(FLEXSYNC_CUSTOMER, environment_id="env_prod")
    back = from_stripe({"id": "cus_9", **params})
    assert differs(FLEXSYNC_CUSTOMER, back.fields) == {}
    assert back.flexprice_customer_id == FLEXSYNC_CUSTOMER["id"]


def test_nameless_stripe_customer_is_named_by_email_then_id() -> None:
    assert from_stripe({"id": "cus_1", "email": "ann@example.com"}).fields["name"] == "ann@example.com"
    assert from_stripe({"id": "cus_2"}).fields["name"] == "cus_2"


def test_data_that_does_not_fit_is_dropped_and_reported() -> None:
    inbound = from_stripe(
        {"id": "cus_3", "name": "X", "email": "not-an-email", "address": {"country": "USA", "postal_code": "9" * 40}}
    )
    assert inbound.fields["address_country"] is None
    assert inbound.fields["email"] is None
    assert inbound.fields["address_postal_code"] is None
    assert len(inbound.problems) == 3
    assert inbound.rejected == {"address_country", "email", "address_postal_code"}
    assert inbound.fields["name"] == "X"


# FlexPrice's billing fields and Stripe's near equivalents: none is in the seed's tables, so none crosses.
BILLING_FIELDS: dict[str, Any] = {
    "timezone": "Asia/Kolkata",
    "contact": "+91 80 1234 5678",
    "contact_persons": [{"first_name": "Grace", "is_primary": True}],
    "billing_currency": "inr",
    "tax_treatment": "exempt",
    "tax_rate_overrides": [{"tax_rate_code": "GST", "currency": "inr"}],
    "onboarding_workflow_name": "enterprise",
}


def test_flexprices_billing_fields_stay_in_flexsync() -> None:
    for for_update in (False, True):
        plain = to_stripe(FLEXSYNC_CUSTOMER, environment_id="env_prod", for_update=for_update)
        billed = to_stripe({**FLEXSYNC_CUSTOMER, **BILLING_FIELDS}, environment_id="env_prod", for_update=for_update)
        assert billed == plain
        assert set(billed) == {"name", "email", "address", "metadata"}


def test_stripes_phone_locales_and_tax_status_stay_in_stripe() -> None:
    stripe_customer = {"id": "cus_9", "name": "Grace Hopper", "email": "grace@example.com"}
    extras = {"phone": "+1 555 0100", "preferred_locales": ["en-US"], "tax_exempt": "exempt", "currency": "usd"}
    assert from_stripe({**stripe_customer, **extras}) == from_stripe(stripe_customer)
    assert set(from_stripe({**stripe_customer, **extras}).fields) == {
        "name", "email", "address_line1", "address_line2", "address_city", "address_state", "address_postal_code",
        "address_country",
    }  # fmt: skip
