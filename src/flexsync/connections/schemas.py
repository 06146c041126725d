"""Request bodies of the connection API (key formats checked before anything is stored), and its answers for
/openapi.json.

Secrets arrive as `SecretStr`, so a stray repr or log line shows `**********`, never the key. Validation
messages describe the expected format and never repeat the value that was sent.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, SecretStr, StringConstraints, model_validator

from flexsync.connections.settings import ConnectionSettings
from flexsync.kit.pagination import ListPage
from flexsync.kit.schemas import ResponseModel, StrictModel, not_nullable

Mode = Literal["test", "live"]

SECRET_KEY_FORMAT = re.compile(r"(?:sk|rk)_(test|live)_[A-Za-z0-9_]+")
PUBLISHABLE_KEY_FORMAT = re.compile(r"pk_(test|live)_[A-Za-z0-9_]+")
WEBHOOK_SECRET_FORMAT = re.compile(r"whsec_[A-Za-z0-9_+/=-]+")
MAX_KEY_LENGTH = 255
# Room for a rollover (new + old) and one spare; Stripe itself keeps two signing secrets at a time.
MAX_WEBHOOK_SECRETS = 3
# Fields of an update that may be left out but not sent as null (connections.service refuses null).
NOT_NULLABLE = ("name", "secret_key", "publishable_key", "settings", "status", "add_webhook_secret")


def key_mode(key: str) -> Mode:
    """The Stripe mode a validated key belongs to, read from its prefix."""
    match = SECRET_KEY_FORMAT.fullmatch(key) or PUBLISHABLE_KEY_FORMAT.fullmatch(key)
    if match is None:
        raise ValueError("not a Stripe API key")
    return "live" if match.group(1) == "live" else "test"


def _strip(value: Any) -> Any:
    # Keys are pasted from Stripe's dashboard; a trailing newline or space is a copy artefact, not part of the key.
    return value.strip() if isinstance(value, str) else value


def _documented(pattern: re.Pattern[str]) -> Any:
    """The format in /openapi.json (the check itself is _format_check's: it also strips surrounding spaces)."""
    return Field(json_schema_extra={"pattern": f"^{pattern.pattern}$", "maxLength": MAX_KEY_LENGTH})


def _format_check(pattern: re.Pattern[str], expected: str) -> Any:
    def check(value: SecretStr) -> SecretStr:
        plain = value.get_secret_value()
        if len(plain) > MAX_KEY_LENGTH or pattern.fullmatch(plain) is None:
            raise ValueError(f"must be {expected}")
        return value

    return check


SecretKey = Annotated[
    SecretStr,
    BeforeValidator(_strip),
    AfterValidator(
        _format_check(SECRET_KEY_FORMAT, "a Stripe secret or restricted key: sk_test_, sk_live_, rk_test_ or rk_live_…")
    ),
    _documented(SECRET_KEY_FORMAT),
]
WebhookSecret = Annotated[
    SecretStr,
    BeforeValidator(_strip),
    AfterValidator(_format_check(WEBHOOK_SECRET_FORMAT, "a Stripe webhook signing secret: whsec_…")),
    _documented(WEBHOOK_SECRET_FORMAT),
]


def _check_publishable_key(value: str) -> str:
    if len(value) > MAX_KEY_LENGTH or PUBLISHABLE_KEY_FORMAT.fullmatch(value) is None:
        raise ValueError("must be a Stripe publishable key: pk_test_… or pk_live_…")
    return value


PublishableKey = Annotated[
    str, BeforeValidator(_strip), AfterValidator(_check_publishable_key), _documented(PUBLISHABLE_KEY_FORMAT)
]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]


# --- The managed webhook endpoint (connections/managed_endpoint.py) ---
MANAGE_WEBHOOK_ENDPOINT = (
    "`true`: flexsync creates (or adopts) the Stripe webhook endpoint for `webhook_url` with the customer events "
    "and stores the signing secret Stripe returns; no `webhook_secret` is needed. When Stripe refuses (its "
    "endpoint limit, a key without the Webhook Endpoints permission, a URL it will not take) the request answers "
    "400 naming the cause in `details.cause` and saves nothing. On an existing connection it also moves the "
    "endpoint to the current URL and re-enables an endpoint Stripe disabled."
)
MANAGED_SECRET_CONFLICT = "give either webhook_secret or manage_webhook_endpoint: true, not both"  # noqa: S105


class ConnectionCreate(StrictModel):
    """The Stripe connection of the API key's environment. Both keys must be of one mode: `sk_test_`/`rk_test_`
    with `pk_test_`, or `sk_live_`/`rk_live_` with `pk_live_` (400 otherwise); the mode is the connection's for
    good."""

    name: Name
    provider: Literal["stripe"] = "stripe"
    secret_key: SecretKey
    publishable_key: PublishableKey
    webhook_secret: WebhookSecret | None = Field(
        default=None,
        description="Stripe's signing secret for the webhook endpoint. May be left out and set later with PUT: "
        "until a connection has one, webhook deliveries answer 404.",
    )
    settings: ConnectionSettings = Field(default_factory=ConnectionSettings)
    verify: bool = Field(
        default=False, description="Check the secret key with Stripe before saving; a rejected key answers 400."
    )
    manage_webhook_endpoint: bool = Field(default=False, description=MANAGE_WEBHOOK_ENDPOINT)

    @model_validator(mode="after")
    def _one_source_of_webhook_secret(self) -> ConnectionCreate:
        if self.manage_webhook_endpoint and self.webhook_secret is not None:
            raise ValueError(MANAGED_SECRET_CONFLICT)
        return self


class ConnectionUpdate(StrictModel):
    """Partial update: only the fields present in the body change."""

    model_config = ConfigDict(json_schema_extra=not_nullable(*NOT_NULLABLE))

    name: Name | None = None
    secret_key: SecretKey | None = Field(
        default=None, description="A new key (e.g. after rolling it in Stripe); its mode must stay the same."
    )
    publishable_key: PublishableKey | None = None
    settings: ConnectionSettings | None = Field(
        default=None, description="Merged into the current settings: given keys replace, the others stay."
    )
    status: Literal["active", "disabled"] | None = Field(
        default=None, description="`disabled` pauses the sync and refuses webhooks without deleting anything."
    )
    webhook_secret: WebhookSecret | None = Field(
        default=None,
        description="Replaces every signing secret with this one; `null` removes them all (webhooks then answer 404).",
    )
    add_webhook_secret: WebhookSecret | None = Field(
        default=None,
        description="Rotation, step 1: adds a new signing secret in front of the current ones (newest first, at "
        f"most {MAX_WEBHOOK_SECRETS}); deliveries signed with any of them verify. Adding one already present "
        "changes nothing.",
    )
    remove_old_webhook_secrets: bool = Field(
        default=False,
        description="Rotation, step 2: keeps only the newest signing secret, once Stripe signs with it alone.",
    )
    verify: bool = Field(
        default=False,
        description="Check the secret key (the new one if given, else the stored one) with Stripe before saving.",
    )
    manage_webhook_endpoint: bool | None = Field(
        default=None,
        description=MANAGE_WEBHOOK_ENDPOINT + " `false`: flexsync stops changing the endpoint and leaves it in Stripe.",
    )


# --- The managed webhook endpoint in answers ---
class WebhookEndpointInfo(ResponseModel):
    id: str = Field(description="Stripe's endpoint id, `we_…`.")
    url: str | None
    status: Literal["enabled", "disabled", "missing"] | None = Field(
        description="As Stripe last reported it (read every few minutes); `missing`: deleted in Stripe."
    )
    enabled_events: list[str]
    managed: bool = Field(description="Whether flexsync creates, moves and deletes this endpoint.")


class Connection(ResponseModel):
    """The public connection object (`service.connection_to_dict`): every field at the top level, never a secret."""

    id: str
    name: str
    provider: Literal["stripe"]
    status: Literal["active", "disabled"]
    mode: Mode
    secret_key_last4: str
    publishable_key: str
    webhook_secret_set: bool
    webhook_secrets_count: int
    webhook_url: str = Field(description="Where Stripe sends this environment's events.")
    settings: ConnectionSettings = Field(description="The effective settings, defaults included.")
    stripe_account_id: str | None = Field(description="Known once `verify` has read it from Stripe.")
    webhook_endpoint: WebhookEndpointInfo | None = Field(
        description="The Stripe webhook endpoint flexsync manages for `webhook_url`; null when unknown."
    )
    tenant_id: str
    environment_id: str
    created_at: datetime
    updated_at: datetime
    catch_up: CatchUp | None = Field(default=None, description="Catch-up from Stripe's Events API.")


class ConnectionList(ListPage[Connection]):
    pass


# --- Catch-up from Stripe's Events API (connections/catch_up.py, sync/catch_up.py) ----------------------------------


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _not_in_future(moment: datetime) -> datetime:
    if moment > datetime.now(UTC):
        raise ValueError("must not be in the future")
    return moment


class CatchUpGap(ResponseModel):
    since: datetime = Field(description="Where the cursor stood: events from then until 30 days ago may be lost.")
    detected_at: datetime


class CatchUpRun(ResponseModel):
    listed: int
    stored: int
    duplicates: int
    applied: int
    ignored: int
    queued: int


class CatchUp(ResponseModel):
    cursor: datetime = Field(description="Every customer event Stripe created before then has been listed.")
    last_run_at: datetime | None
    lag_seconds: int = Field(description="How far the cursor is behind now.")
    last_error: str | None = Field(description="Why the last run stopped; null when it finished.")
    recovered_24h: int = Field(description="Events catch-up stored in the last 24 hours that no webhook delivered.")
    running: bool
    requested: bool = Field(description="A catch-up was asked for and no worker has started it yet.")
    last_run: CatchUpRun | None = Field(description="What the last finished run did.")
    gap: CatchUpGap | None = Field(
        description="The cursor was older than the 30 days of events Stripe keeps; open until a reconciliation "
        "(`both` or `from-stripe`) succeeds."
    )


class CatchUpRequest(StrictModel):
    since: Annotated[datetime, AfterValidator(_aware), AfterValidator(_not_in_future)] | None = Field(
        default=None,
        description="List the events created since then (ISO 8601; UTC when no offset is given) instead of since "
        "the cursor.",
    )


class CatchUpRequested(ResponseModel):
    connection_id: str
    status: Literal["requested"]
    since: datetime | None
    catch_up: CatchUp
