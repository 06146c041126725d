"""The field mapping between a flexsync customer and a Stripe customer, both ways. Pure: no I/O.

Implements the two tables of the seed document. Stripe data that does not fit a flexsync field
(a country that is not ISO 3166-1 alpha-2, an over-long value, an invalid email, text holding a NUL
character) is dropped from that field and reported as a problem, so the rest of the customer is still
applied.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flexsync.kit.countries import normalize_country
from flexsync.kit.text import NUL
from flexsync.models import Customer, max_length

STRIPE_ID_KEY = "stripe_customer_id"
FLEXPRICE_ID_KEY = "flexprice_customer_id"
FLEXPRICE_ENVIRONMENT_KEY = "flexprice_environment"
EXTERNAL_ID_KEY = "external_id"

# flexsync field -> Stripe address key
ADDRESS_MAP = {
    "address_line1": "line1",
    "address_line2": "line2",
    "address_city": "city",
    "address_state": "state",
    "address_postal_code": "postal_code",
    "address_country": "country",
}
FIELD_LIMITS = {
    "name": 255,
    "email": 255,
    "address_line1": 255,
    "address_line2": 255,
    "address_city": 100,
    "address_state": 100,
    "address_postal_code": 20,
}
MAPPED_FIELDS = ("name", "email", *ADDRESS_MAP)
MAX_EXTERNAL_ID_LENGTH = max_length(Customer.external_id)


@dataclass(slots=True)
class InboundCustomer:
    """A Stripe customer translated into flexsync's fields."""

    stripe_id: str
    fields: dict[str, str | None]
    flexprice_customer_id: str | None
    deleted: bool = False
    problems: list[str] = field(default_factory=list)
    # Fields Stripe had a value for that does not fit (see problems): None in `fields`, and left as they are
    # when an existing customer is updated.
    rejected: frozenset[str] = frozenset()


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


# A plain address: an ASCII dot-atom before the @, after it dotted labels of letters, digits and single inner
# hyphens ending in an alphabetic top-level domain. email_validator accepts every such address (bar the
# special-use domains below); checking them with a regex first spares its much slower full check on every
# webhook. Anything else gets the full check.
_PLAIN_EMAIL = re.compile(
    r"(?P<local>[A-Za-z0-9_!#$%&'*+/=?^`{|}~-]+(?:\.[A-Za-z0-9_!#$%&'*+/=?^`{|}~-]+)*)"
    r"@(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+(?P<tld>[A-Za-z]{2,63}))"
)
_SPECIAL_USE_TLDS = frozenset({"arpa", "invalid", "local", "localhost", "onion", "test"})


def _plain_email(value: str) -> bool:
    match = _PLAIN_EMAIL.fullmatch(value)
    return (
        match is not None
        and len(value) <= 254
        and len(match["local"]) <= 64
        and len(match["domain"]) <= 253
        and "--" not in match["domain"]
        and match["tld"].lower() not in _SPECIAL_USE_TLDS
    )


def _valid_email(value: str) -> bool:
    if _plain_email(value):
        return True
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def from_stripe(customer: Mapping[str, Any]) -> InboundCustomer:
    """Stripe customer object -> flexsync fields (seed table "Stripe to FlexPrice")."""
    stripe_id = str(customer["id"])
    problems: list[str] = []
    address = customer.get("address") or {}
    fields: dict[str, str | None] = {
        "name": _clean(customer.get("name")),
        "email": _clean(customer.get("email")),
    }
    for ours, theirs in ADDRESS_MAP.items():
        fields[ours] = _clean(address.get(theirs)) if isinstance(address, Mapping) else None

    rejected: set[str] = set()

    def reject(name: str, problem: str) -> None:
        problems.append(problem)
        rejected.add(name)
        fields[name] = None

    for name, value in fields.items():
        if value is not None and NUL in value:
            reject(name, f"{name} contains the NUL character (\\u0000); not copied")
    if fields["email"] is not None and not _valid_email(fields["email"]):
        reject("email", f"email {fields['email']!r} is not a valid address; not copied")
    if fields["address_country"] is not None:
        try:
            fields["address_country"] = normalize_country(fields["address_country"])
        except ValueError:
            reject("address_country", f"country {fields['address_country']!r} is not ISO 3166-1 alpha-2; not copied")
    for name, limit in FIELD_LIMITS.items():
        value = fields.get(name)
        if value is not None and len(value) > limit:
            reject(name, f"{name} is longer than {limit} characters; not copied")
    # A customer is never dropped for want of a name: the email, else the Stripe id, stands in.
    fields["name"] = fields["name"] or fields["email"] or stripe_id

    metadata = customer.get("metadata") or {}
    flexprice_id = _clean(metadata.get(FLEXPRICE_ID_KEY)) if isinstance(metadata, Mapping) else None
    # It names a customer by id or external_id, and becomes the external_id of a customer created for it.
    if flexprice_id is not None and (NUL in flexprice_id or len(flexprice_id) > MAX_EXTERNAL_ID_LENGTH):
        problems.append(
            f"metadata.{FLEXPRICE_ID_KEY} is not a usable customer id (at most {MAX_EXTERNAL_ID_LENGTH} "
            "characters, no NUL); not used"
        )
        flexprice_id = None
    return InboundCustomer(
        stripe_id=stripe_id,
        fields=fields,
        flexprice_customer_id=flexprice_id,
        deleted=bool(customer.get("deleted")),
        problems=problems,
        rejected=frozenset(rejected),
    )


def to_stripe(customer: Mapping[str, Any], *, environment_id: str, for_update: bool = False) -> dict[str, Any]:
    """flexsync customer (its API dict) -> Stripe create/update parameters (seed table "FlexPrice to Stripe").

    On update, empty strings clear what flexsync no longer has, so Stripe ends up equal to flexsync.
    """
    params: dict[str, Any] = {"name": customer["name"]}
    email = customer.get("email")
    if email or for_update:
        params["email"] = email or ""
    address = {theirs: customer.get(ours) or "" for ours, theirs in ADDRESS_MAP.items()}
    if any(address.values()):
        params["address"] = address if for_update else {k: v for k, v in address.items() if v}
    elif for_update:
        params["address"] = ""
    params["metadata"] = {
        FLEXPRICE_ID_KEY: customer["id"],
        FLEXPRICE_ENVIRONMENT_KEY: environment_id,
        EXTERNAL_ID_KEY: customer["external_id"],
    }
    return params


def differs(current: Mapping[str, Any], incoming: Mapping[str, str | None]) -> dict[str, str | None]:
    """The mapped fields whose incoming value differs from the current one."""
    return {name: incoming.get(name) for name in MAPPED_FIELDS if current.get(name) != incoming.get(name)}


def changes_from_stripe(current: Mapping[str, Any], incoming: InboundCustomer) -> dict[str, str | None]:
    """What copying the Stripe customer onto a customer with these fields changes: the fields that differ,
    but for those whose Stripe value does not fit (the customer keeps its own). Also how an incoming customer
    is compared with what flexsync last pushed: a value that does not fit was not pushed by flexsync, and
    copying it would change nothing."""
    return {name: value for name, value in differs(current, incoming.fields).items() if name not in incoming.rejected}
