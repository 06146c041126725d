"""Request bodies of the customer API, with every input rule in one place, and its answers for /openapi.json."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, StringConstraints, WithJsonSchema

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


class IntegrationEntityMapping(StrictModel):
    provider: Literal["stripe"]
    id: Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^cus_[A-Za-z0-9]+$", max_length=255)]


class CustomerFields(StrictModel):
    email: Email = None
    address_line1: OptionalText255 = None
    address_line2: OptionalText255 = None
    address_city: OptionalText100 = None
    address_state: OptionalText100 = None
    address_postal_code: OptionalText20 = None
    address_country: Country = None
    metadata: Metadata = None


class CustomerCreate(CustomerFields):
    external_id: RequiredText255
    name: RequiredText255
    parent_customer_id: OptionalText255 = None
    parent_customer_external_id: OptionalText255 = None
    integration_entity_mapping: list[IntegrationEntityMapping] | None = Field(default=None, max_length=1)
    # FlexPrice's onboarding workflows and tax overrides do not exist here; an empty or false value is accepted.
    skip_onboarding_workflow: bool | None = None
    tax_rate_overrides: list[Any] | None = Field(default=None, max_length=0)


class CustomerUpdate(CustomerFields):
    """Partial update: only the fields present in the body change."""

    model_config = ConfigDict(json_schema_extra=not_nullable(*NOT_NULLABLE))

    external_id: RequiredText255 | None = None
    name: RequiredText255 | None = None
    parent_customer_id: OptionalText255 = None
    parent_customer_external_id: OptionalText255 = None
    integration_entity_mapping: list[IntegrationEntityMapping] | None = Field(default=None, max_length=1)


CustomerStatus = Literal["published", "archived"]
CustomerStatusFilter = Literal["published", "archived", "all"]


SortableField = Literal["created_at", "updated_at", "name", "external_id", "email"]


class SortSpec(StrictModel):
    field: SortableField
    direction: Literal["asc", "desc"] = "asc"


class CustomerSearch(StrictModel):
    """FlexPrice's customer filter. Its generic `filters` list is accepted only when empty."""

    customer_ids: list[str] | None = Field(default=None, max_length=1000)
    external_ids: list[str] | None = Field(default=None, max_length=1000)
    parent_customer_ids: list[str] | None = Field(default=None, max_length=1000)
    external_id: str | None = None
    email: str | None = None
    status: CustomerStatusFilter | None = None
    start_time: UTCTime | None = None
    end_time: UTCTime | None = None
    limit: int = Field(default=50, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
    order: Literal["asc", "desc"] = "desc"
    sort: list[SortSpec] | None = Field(default=None, max_length=5)
    expand: str | None = None
    filters: list[Any] | None = Field(default=None, max_length=0)


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
    created_at: datetime
    updated_at: datetime
    created_by: str = Field(description="The API key's id, or `stripe` / `system` for the sync's changes.")
    updated_by: str


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
