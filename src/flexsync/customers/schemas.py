"""Request bodies of the customer API, with every input rule in one place, and its answers for /openapi.json."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime
from functools import cache
from typing import Annotated, Any, Literal

import pycountry
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from flexsync.jobs.schemas import JobStatus, SyncJob
from flexsync.kit.countries import normalize_country
from flexsync.kit.pagination import MAX_OFFSET, ListPage
from flexsync.kit.schemas import ResponseModel, StrictModel, not_nullable

# Stripe's own limits, since every customer may be pushed there.
METADATA_MAX_KEYS = 50
METADATA_KEY_MAX = 40
METADATA_VALUE_MAX = 500
SYNC_OWNED_METADATA_KEYS = frozenset({"stripe_customer_id"})
# Fields of a partial update that may be left out but not cleared (customers.service refuses null).
NOT_NULLABLE = ("external_id", "name")


def _blank_to_none(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _check_email(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address ({exc})") from None


@cache
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _check_timezone(value: str | None) -> str | None:
    if value is None:
        return None
    if value not in _timezones():
        raise ValueError('must be an IANA time zone name, like "UTC", "Europe/Berlin" or "Asia/Kolkata"')
    return value


# ISO 4217 codes of things that are not money one bills in: precious metals, fund units, testing, "no currency".
NOT_FIAT = frozenset({"XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XDR", "XPD", "XPT", "XSU", "XTS", "XUA", "XXX"})


def normalize_currency(value: str | None) -> str | None:
    """An ISO 4217 currency code in any case, kept lower case as FlexPrice and Stripe write currencies."""
    if value is None:
        return None
    code = value.strip().upper()
    if len(code) != 3 or pycountry.currencies.get(alpha_3=code) is None or code in NOT_FIAT:
        raise ValueError("must be an ISO 4217 currency code, like usd or EUR")
    return code.lower()


def _in_utc(value: datetime) -> datetime:
    """A filter's time in UTC: without an offset it is UTC; one that UTC cannot express (0001-01-01 at +05:00)
    becomes the first or last time there is, which filters the same."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return (datetime.min if value.year == datetime.min.year else datetime.max).replace(tzinfo=UTC)


def _check_metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return None
    if len(value) > METADATA_MAX_KEYS:
        raise ValueError(f"at most {METADATA_MAX_KEYS} keys")
    for key, item in value.items():
        if not key or len(key) > METADATA_KEY_MAX:
            raise ValueError(f"keys must be 1-{METADATA_KEY_MAX} characters")
        if len(item) > METADATA_VALUE_MAX:
            raise ValueError(f"values must be at most {METADATA_VALUE_MAX} characters")
    return value


OptionalText255 = Annotated[
    Annotated[str, StringConstraints(strip_whitespace=True, max_length=255)] | None, BeforeValidator(_blank_to_none)
]
OptionalText100 = Annotated[
    Annotated[str, StringConstraints(strip_whitespace=True, max_length=100)] | None, BeforeValidator(_blank_to_none)
]
OptionalText20 = Annotated[
    Annotated[str, StringConstraints(strip_whitespace=True, max_length=20)] | None, BeforeValidator(_blank_to_none)
]
RequiredText255 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
Email = Annotated[
    Annotated[str, StringConstraints(strip_whitespace=True, max_length=255)] | None,
    BeforeValidator(_blank_to_none),
    AfterValidator(_check_email),
]
# The format in /openapi.json; normalize_country checks it (surrounding spaces allowed) and that the code exists.
Country = Annotated[
    Annotated[str, WithJsonSchema({"type": "string", "pattern": "^[A-Za-z]{2}$"})] | None,
    BeforeValidator(_blank_to_none),
    AfterValidator(normalize_country),
    Field(
        description="An assigned ISO 3166-1 alpha-2 code, like US or DE, in any case (stored upper case); two "
        "letters that name no country, like XX, are refused."
    ),
]
Metadata = Annotated[dict[str, str] | None, AfterValidator(_check_metadata)]
UTCTime = Annotated[datetime, AfterValidator(_in_utc)]
Timezone = Annotated[
    Annotated[str, StringConstraints(strip_whitespace=True, max_length=64)] | None,
    BeforeValidator(_blank_to_none),
    AfterValidator(_check_timezone),
    Field(description='An IANA time zone name, like "Asia/Kolkata"; `UTC` when left out, null or blank.'),
]
Currency = Annotated[
    Annotated[str, WithJsonSchema({"type": "string", "pattern": "^[A-Za-z]{3}$"})] | None,
    BeforeValidator(_blank_to_none),
    AfterValidator(normalize_currency),
    Field(description="The ISO 4217 code of the currency invoices are issued in, in any case (kept lower case)."),
]
StripeCustomerId = Annotated[
    str, StringConstraints(strip_whitespace=True, pattern=r"^cus_[A-Za-z0-9]+$", max_length=255)
]
# Where FlexPrice's entity types are named, these are the ones it has; flexsync keeps customers only.
EntityType = Literal[
    "customer",
    "plan",
    "invoice",
    "subscription",
    "payment",
    "credit_note",
    "addon",
    "item",
    "item_price",
    "price",
    "invoice_line_item",
    "subscription_line_item",
]
ProviderType = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50)]


class IntegrationEntityMapping(StrictModel):
    """A link to an existing Stripe customer, in either shape: flexsync's first `{"provider", "id"}`, or
    FlexPrice's `{"provider_type", "provider_entity_id"}` (its `entity_id` and `entity_type` may be sent:
    the mapping is always of the customer in the request)."""

    provider: Literal["stripe"] | None = None
    id: StripeCustomerId | None = None
    provider_type: ProviderType | None = None
    provider_entity_id: StripeCustomerId | None = None
    entity_id: Annotated[str, StringConstraints(max_length=255)] | None = None
    entity_type: EntityType | None = None
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> IntegrationEntityMapping:
        short = self.provider is not None or self.id is not None
        flexprice = self.provider_type is not None or self.provider_entity_id is not None
        if short == flexprice:
            raise ValueError(
                'give either {"provider": "stripe", "id": "cus_..."} or '
                '{"provider_type": "stripe", "provider_entity_id": "cus_..."}'
            )
        if short and (self.provider is None or self.id is None):
            raise ValueError('needs both "provider" and "id"')
        if flexprice and (self.provider_type is None or self.provider_entity_id is None):
            raise ValueError('needs both "provider_type" and "provider_entity_id"')
        if self.provider_type is not None and self.provider_type.lower() != "stripe":
            raise ValueError(f"provider_type {self.provider_type!r}: flexsync links Stripe customers only")
        if self.entity_type not in (None, "customer"):
            raise ValueError(f"entity_type {self.entity_type!r}: the mapping of a customer has entity_type customer")
        return self

    @property
    def stripe_customer_id(self) -> str:
        found = self.id or self.provider_entity_id
        assert found is not None  # _one_shape has made sure of it
        return found


def _one_primary(value: list[ContactPerson] | None) -> list[ContactPerson] | None:
    if value is not None and sum(1 for person in value if person.is_primary) > 1:
        raise ValueError("at most one contact person may be primary")
    return value


class ContactPerson(StrictModel):
    """Someone at the customer (FlexPrice's contact person), kept as given."""

    id: OptionalText100 = None
    first_name: RequiredText255
    last_name: OptionalText255 = None
    email: Email = None
    mobile: OptionalText20 = None
    salutation: OptionalText20 = None
    department: OptionalText255 = None
    designation: OptionalText255 = None
    is_primary: bool = False


class TaxRateOverride(StrictModel):
    """A tax rate FlexPrice would link to the customer; flexsync keeps it as given."""

    tax_rate_code: RequiredText255
    currency: Annotated[str, AfterValidator(normalize_currency), Field(description="ISO 4217, kept lower case.")]
    priority: int = Field(default=0, ge=0, le=1_000_000)
    auto_apply: bool = True
    tax_behavior: Literal["inclusive", "exclusive"] | None = None
    metadata: Metadata = None


ContactPersons = Annotated[list[ContactPerson] | None, Field(max_length=50), AfterValidator(_one_primary)]
MAX_CONTACT_LENGTH = 20


class CustomerFields(StrictModel):
    email: Email = None
    address_line1: OptionalText255 = None
    address_line2: OptionalText255 = None
    address_city: OptionalText100 = None
    address_state: OptionalText100 = None
    address_postal_code: OptionalText20 = None
    address_country: Country = None
    metadata: Metadata = None
    timezone: Timezone = None
    contact: OptionalText20 = Field(default=None, description="A contact number, like a phone (20 characters).")
    contact_persons: ContactPersons = None
    billing_currency: Currency = None
    tax_treatment: Literal["taxable", "exempt"] | None = None


class CustomerCreate(CustomerFields):
    external_id: RequiredText255
    name: RequiredText255
    parent_customer_id: OptionalText255 = None
    parent_customer_external_id: OptionalText255 = None
    integration_entity_mapping: list[IntegrationEntityMapping] | None = Field(default=None, max_length=1)
    tax_rate_overrides: list[TaxRateOverride] | None = Field(default=None, max_length=50)
    onboarding_workflow_name: OptionalText255 = Field(
        default=None, description="Kept and returned; flexsync runs no onboarding workflows."
    )
    skip_onboarding_workflow: bool | None = Field(
        default=None, description="Accepted for FlexPrice's SDKs; flexsync runs no onboarding workflows."
    )


class CustomerUpdate(CustomerFields):
    """Partial update: only the fields present in the body change."""

    model_config = ConfigDict(json_schema_extra=not_nullable(*NOT_NULLABLE))

    external_id: RequiredText255 | None = None
    name: RequiredText255 | None = None
    parent_customer_id: OptionalText255 = None
    parent_customer_external_id: OptionalText255 = None
    integration_entity_mapping: list[IntegrationEntityMapping] | None = Field(default=None, max_length=1)


CustomerStatus = Literal["published", "archived"]
# `deleted` is one of FlexPrice's statuses; a customer is archived, never deleted, so it matches none.
CustomerStatusFilter = Literal["published", "archived", "deleted", "all"]


class SortSpec(StrictModel):
    field: str = Field(description="A customer field: see `filters` for the names.")
    direction: Literal["asc", "desc"] = "asc"


class FilterValue(StrictModel):
    """FlexPrice's tagged value: the member named by the condition's `data_type` is the one used."""

    string: Annotated[str, StringConstraints(max_length=1000)] | None = None
    number: float | None = None
    boolean: bool | None = None
    date: UTCTime | None = None
    array: list[Annotated[str, StringConstraints(max_length=1000)]] | None = Field(default=None, max_length=1000)


class FilterCondition(StrictModel):
    """One of FlexPrice's filter conditions. `customers.search` says which field takes which operator."""

    field: str | None = None
    operator: str | None = None
    data_type: Literal["string", "number", "date", "array"] | None = None
    value: FilterValue | None = None


class CustomerSearch(StrictModel):
    """FlexPrice's customer filter (its `CustomerFilter`), every field."""

    customer_ids: list[str] | None = Field(default=None, max_length=1000)
    external_ids: list[str] | None = Field(default=None, max_length=1000)
    parent_customer_ids: list[str] | None = Field(default=None, max_length=1000)
    external_id: str | None = None
    email: str | None = None
    metadata: dict[str, str] | None = Field(
        default=None, max_length=METADATA_MAX_KEYS, description="Customers whose metadata has every pair."
    )
    status: CustomerStatusFilter | None = Field(
        default=None,
        description="`published` when left out; `all` for both; `deleted` matches none (deleting archives).",
    )
    start_time: UTCTime | None = None
    end_time: UTCTime | None = None
    limit: int = Field(default=50, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
    order: Literal["asc", "desc"] = "desc"
    sort: list[SortSpec] | None = Field(default=None, max_length=10)
    expand: str | None = Field(default=None, description="`integrations`: each customer's Stripe link.")
    filters: list[FilterCondition] | None = Field(default=None, max_length=50)


class IntegrationMapping(ResponseModel):
    """FlexPrice's entity integration mapping: a customer's link to a Stripe customer (`customer_links`)."""

    id: str
    entity_id: str
    entity_type: Literal["customer"]
    provider_type: Literal["stripe"]
    provider_entity_id: str
    environment_id: str
    tenant_id: str
    status: Literal["published", "archived"] = Field(
        description="`archived` once the Stripe customer was deleted in Stripe."
    )
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    created_by: str = Field(description="The API key that linked, or `system` for links the sync made.")
    updated_by: str


class Customer(ResponseModel):
    """FlexPrice's customer object (`service.customer_to_dict`): every key always present."""

    id: str
    external_id: str
    name: str
    email: str | None
    address_line1: str | None
    address_line2: str | None
    address_city: str | None
    address_state: str | None
    address_postal_code: str | None
    address_country: str | None = Field(description="ISO 3166-1 alpha-2, upper case.")
    metadata: dict[str, str] = Field(description="`stripe_customer_id` holds the linked Stripe customer's id.")
    status: CustomerStatus
    tenant_id: str
    environment_id: str
    parent_customer_id: str | None
    parent_customer: None
    timezone: str
    contact: str | None
    contact_persons: list[ContactPerson]
    billing_currency: str | None
    tax_treatment: Literal["taxable", "exempt"] | None
    tax_rate_overrides: list[TaxRateOverride]
    onboarding_workflow_name: str | None
    created_at: datetime
    updated_at: datetime
    created_by: str = Field(description="The API key's id, or `stripe` / `system` for the sync's changes.")
    updated_by: str
    integrations: list[IntegrationMapping] | None = Field(
        default=None, description="Only with `expand=integrations`: the customer's Stripe link, if any."
    )


class CustomerList(ListPage[Customer]):
    pass


class SyncRequested(ResponseModel):
    job_id: str
    status: JobStatus


class CustomerSyncStatus(ResponseModel):
    """The customer's Stripe link and outbound sync state (`sync.status.sync_statuses`)."""

    customer_id: str
    connection_id: str | None
    stripe_customer_id: str | None
    link_status: Literal["linked", "deleted_in_stripe", "pending", "not_linked"]
    last_synced_at: datetime | None
    last_error: str | None
    pending_jobs: list[SyncJob]
