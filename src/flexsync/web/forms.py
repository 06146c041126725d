"""HTML forms to the API's own request models: the same rules, the same messages, shown beside each field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData

from flexsync.customers.schemas import SYNC_OWNED_METADATA_KEYS
from flexsync.kit.errors import APIError, describe_validation_errors

ModelT = TypeVar("ModelT", bound=BaseModel)

FORM_ERROR = "_form"


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    label: str
    type: str = "text"
    required: bool = False
    autocomplete: str = "off"
    hint: str = ""
    maxlength: int | None = None


CUSTOMER_FIELDS = (
    Field("external_id", "External id", required=True, hint="Your own id for this customer.", maxlength=255),
    Field("name", "Name", required=True, autocomplete="organization", maxlength=255),
    Field("email", "Email", type="email", autocomplete="email", maxlength=255),
    Field("address_line1", "Address line 1", autocomplete="address-line1", maxlength=255),
    Field("address_line2", "Address line 2", autocomplete="address-line2", maxlength=255),
    Field("address_city", "City", autocomplete="address-level2", maxlength=100),
    Field("address_state", "State / province", autocomplete="address-level1", maxlength=100),
    Field("address_postal_code", "Postal code", autocomplete="postal-code", maxlength=20),
    Field("address_country", "Country", autocomplete="country", hint="ISO 3166-1 alpha-2 code, like US or DE."),
)
METADATA_FIELD = "metadata"
CUSTOMER_LABELS = {f.name: f.label for f in CUSTOMER_FIELDS} | {METADATA_FIELD: "Metadata"}


@dataclass(slots=True)
class FormState:
    """What a form shows: the values as typed and a message per field (`_form` for the whole form)."""

    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def invalid(self) -> bool:
        return bool(self.errors)


def text_values(form: FormData, names: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name in names:
        value = form.get(name)
        values[name] = value if isinstance(value, str) else ""
    return values


def metadata_text(metadata: dict[str, Any]) -> str:
    """A customer's client metadata as `key=value` lines; the sync's own keys are shown apart, read-only."""
    return "\n".join(f"{k}={v}" for k, v in metadata.items() if k not in SYNC_OWNED_METADATA_KEYS)


def parse_metadata(text: str) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"line {number}: write each entry as key=value")
        metadata[key.strip()] = value.strip()
    return metadata


def field_errors(details_fields: dict[str, Any]) -> dict[str, str]:
    """The API's `details.fields` keyed by form field: `metadata.plan` is shown beside the metadata box."""
    errors: dict[str, str] = {}
    for path, problem in details_fields.items():
        name, _, rest = path.partition(".")
        message = f"{rest}: {problem}" if rest else str(problem)
        errors.setdefault(name, message)
    return errors


def validation_errors(exc: ValidationError) -> dict[str, str]:
    _message, details = describe_validation_errors(list(exc.errors()))
    return field_errors(details["fields"])


def api_errors(exc: APIError) -> dict[str, str]:
    fields = exc.details.get("fields")
    errors = field_errors(fields) if isinstance(fields, dict) else {}
    errors.setdefault(FORM_ERROR, exc.message)
    return errors


def customer_form(form: FormData) -> tuple[FormState, dict[str, Any]]:
    """The typed values and the request body they make; errors when the metadata box cannot be read."""
    state = FormState(values=text_values(form, [f.name for f in CUSTOMER_FIELDS] + [METADATA_FIELD]))
    body: dict[str, Any] = {f.name: state.values[f.name] for f in CUSTOMER_FIELDS}
    try:
        body[METADATA_FIELD] = parse_metadata(state.values[METADATA_FIELD])
    except ValueError as exc:
        state.errors[METADATA_FIELD] = str(exc)
    return state, body


def build(model: type[ModelT], body: dict[str, Any], state: FormState) -> ModelT | None:
    """The API's request model from a form body, or None with the API's messages recorded per field."""
    try:
        built = model.model_validate(body)
    except ValidationError as exc:
        for name, message in validation_errors(exc).items():
            state.errors.setdefault(name, message)
        return None
    return None if state.invalid else built


CONNECTION_NAME = Field("name", "Connection name", required=True, hint='A descriptive name, like "Production Stripe".')
PUBLISHABLE_KEY = Field("publishable_key", "Stripe publishable key", required=True, hint="pk_test_… or pk_live_…")


CONNECTION_LABELS = {
    "name": "Connection name",
    "publishable_key": "Publishable key",
    "secret_key": "Secret key",
    "webhook_secret": "Webhook signing secret",
    "settings": "Settings",
    "verify": "Check with Stripe",
    "provider": "Connection",
}


def secret_fields(editing: bool) -> tuple[Field, Field]:
    """The write-only secret inputs; when editing, a blank one keeps the stored secret."""
    keep = " Leave blank to keep the current one." if editing else ""
    return (
        Field(
            "secret_key",
            "New Stripe secret key" if editing else "Stripe secret key",
            type="password",
            required=not editing,
            hint=f"sk_… or a restricted rk_… key with read and write access to Customers.{keep}",
        ),
        Field(
            "webhook_secret",
            "New webhook signing secret" if editing else "Webhook signing secret",
            type="password",
            hint=f"whsec_…, shown by Stripe once the webhook endpoint below exists; can be added later.{keep}",
        ),
    )


SWITCHES = (
    ("inbound_enabled", "Apply Stripe webhook events", "Customers created or changed in Stripe update flexsync."),
    ("outbound_enabled", "Create customers in Stripe", "Every new flexsync customer gets a Stripe customer."),
    ("push_updates", "Push changes to Stripe", "Changes to a linked customer are sent to its Stripe customer."),
    (
        "email_matching",
        "Match by email",
        "A new Stripe customer is linked to an unlinked flexsync customer with the same email.",
    ),
)
CHOICES = {
    "on_stripe_delete": (
        "When a customer is deleted in Stripe",
        [("ignore", "Keep the link and the customer"), ("unlink", "Unlink the customer"), ("archive", "Archive")],
    ),
    "on_customer_archive": (
        "When a customer is archived here",
        [("ignore", "Leave the Stripe customer"), ("delete_in_stripe", "Delete the Stripe customer")],
    ),
    "on_catch_up_gap": (
        "When catch-up finds more than Stripe's 30 days of events missed",
        [("warn", "Warn (recommend a reconciliation)"), ("reconcile", "Start a from-Stripe reconciliation")],
    ),
}


def connection_settings(form: FormData) -> dict[str, Any]:
    """The settings switches: an unticked checkbox is simply absent from the form."""
    chosen: dict[str, Any] = {name: form.get(name) == "on" for name, _label, _hint in SWITCHES}
    for name in CHOICES:
        value = form.get(name)
        chosen[name] = value if isinstance(value, str) else ""
    return chosen


def connection_form(form: FormData, editing: bool) -> tuple[FormState, dict[str, Any]]:
    """Typed values (never the secrets: those are not sent back to the browser) and the request body."""
    state = FormState(values=text_values(form, ["name", "publishable_key"]))
    body: dict[str, Any] = dict(state.values)
    for name in ("secret_key", "webhook_secret"):
        secret = form.get(name)
        if isinstance(secret, str) and secret.strip():
            body[name] = secret
        elif not editing and name == "secret_key":
            body[name] = ""
    body["settings"] = connection_settings(form)
    body["verify"] = form.get("verify") == "on"
    if not editing and form.get("manage_webhook_endpoint") == "on":
        body["manage_webhook_endpoint"] = True
    return state, body
