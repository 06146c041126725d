"""Business rules for customers. Services flush but never commit: the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from flexsync.customers import repository
from flexsync.customers.schemas import (
    NOT_NULLABLE,
    SYNC_OWNED_METADATA_KEYS,
    ContactPerson,
    CustomerCreate,
    CustomerUpdate,
)
from flexsync.ids import new_id
from flexsync.kit.errors import AlreadyExists, NotFound, ValidationFailed
from flexsync.models import Customer, utcnow
from flexsync.sync import outbound
from flexsync.sync.mappings import mappings_of
from flexsync.tenancy.service import Scope

ADDRESS_FIELDS = (
    "address_line1",
    "address_line2",
    "address_city",
    "address_state",
    "address_postal_code",
    "address_country",
)
# FlexPrice's billing fields: kept and returned, none of them mirrored in Stripe (the seed's mapping has none).
BILLING_FIELDS = ("contact", "billing_currency", "tax_treatment")
# Fields a client may set directly on a customer; metadata, parent links, the timezone and the lists of
# contact persons and tax rate overrides have rules of their own.
PLAIN_FIELDS = ("external_id", "name", "email", *ADDRESS_FIELDS, *BILLING_FIELDS)
DEFAULT_TIMEZONE = "UTC"
# The fields that Stripe mirrors: a change to any of them is worth pushing.
SYNCED_FIELDS = frozenset({"name", "email", *ADDRESS_FIELDS, "external_id"})


def customer_to_dict(customer: Customer) -> dict[str, Any]:
    """The FlexPrice customer object: every key always present (its SDK rejects missing ones)."""
    return {
        "id": customer.id,
        "external_id": customer.external_id,
        "name": customer.name,
        "email": customer.email,
        "address_line1": customer.address_line1,
        "address_line2": customer.address_line2,
        "address_city": customer.address_city,
        "address_state": customer.address_state,
        "address_postal_code": customer.address_postal_code,
        "address_country": customer.address_country,
        "metadata": dict(customer.metadata_ or {}),
        "status": customer.status,
        "tenant_id": customer.tenant_id,
        "environment_id": customer.environment_id,
        "parent_customer_id": customer.parent_customer_id,
        "parent_customer": None,
        "timezone": customer.timezone,
        "contact": customer.contact,
        "contact_persons": list(customer.contact_persons or []),
        "billing_currency": customer.billing_currency,
        "tax_treatment": customer.tax_treatment,
        "tax_rate_overrides": list(customer.tax_rate_overrides or []),
        "onboarding_workflow_name": customer.onboarding_workflow_name,
        "created_at": customer.created_at,
        "updated_at": customer.updated_at,
        "created_by": customer.created_by,
        "updated_by": customer.updated_by,
    }


async def customers_to_dicts(
    session: AsyncSession, customers: Sequence[Customer], expand: frozenset[str]
) -> list[dict[str, Any]]:
    """The customers as the API answers them, with their Stripe links as FlexPrice's mappings if expanded."""
    bodies = [customer_to_dict(customer) for customer in customers]
    if "integrations" in expand:
        mappings = await mappings_of(session, customers)
        for body in bodies:
            body["integrations"] = mappings[body["id"]]
    return bodies


def _contact_persons(persons: list[ContactPerson] | None) -> list[dict[str, Any]]:
    """As stored and returned: as given, unset fields left out."""
    return [person.model_dump(exclude_none=True) for person in persons or []]


def _check_client_metadata(new: dict[str, str], current: dict[str, Any]) -> None:
    for key in SYNC_OWNED_METADATA_KEYS & new.keys():
        if new[key] != current.get(key):
            raise ValidationFailed(
                f"metadata.{key} is managed by the Stripe sync and cannot be set by a client",
                {"fields": {f"metadata.{key}": "read-only"}},
            )


def _merge_client_metadata(new: dict[str, str], current: dict[str, Any]) -> dict[str, Any]:
    """FlexPrice's rule: given metadata replaces the client's keys; the sync's own keys stay."""
    _check_client_metadata(new, current)
    merged: dict[str, Any] = {k: v for k, v in current.items() if k in SYNC_OWNED_METADATA_KEYS}
    merged.update({k: v for k, v in new.items() if k not in SYNC_OWNED_METADATA_KEYS})
    return merged


async def _resolve_parent(
    session: AsyncSession, scope: Scope, parent_id: str | None, parent_external_id: str | None
) -> str | None:
    if parent_id is not None:
        parent = await repository.get(session, scope, parent_id)
        if parent is None or parent.status != "published":
            raise ValidationFailed(
                f"parent customer {parent_id} not found", {"fields": {"parent_customer_id": "not found"}}
            )
        return parent.id
    if parent_external_id is not None:
        parent = await repository.get_published_by_external_id(session, scope, parent_external_id)
        if parent is None:
            raise ValidationFailed(
                f"parent customer with external_id {parent_external_id} not found",
                {"fields": {"parent_customer_external_id": "not found"}},
            )
        return parent.id
    return None


async def _flush_unique(session: AsyncSession, external_id: str) -> None:
    """Flush, turning the database's uniqueness guard into the contract's 409."""
    try:
        await session.flush()
    except IntegrityError as exc:
        raise AlreadyExists(
            f"a published customer with external_id {external_id!r} already exists",
            {"fields": {"external_id": "already exists"}},
        ) from exc


async def _ensure_external_id_free(session: AsyncSession, scope: Scope, external_id: str, own_id: str | None) -> None:
    existing = await repository.get_published_by_external_id(session, scope, external_id)
    if existing is not None and existing.id != own_id:
        raise AlreadyExists(
            f"a published customer with external_id {external_id!r} already exists",
            {"fields": {"external_id": "already exists"}, "customer_id": existing.id},
        )


async def create_customer(session: AsyncSession, scope: Scope, data: CustomerCreate, actor: str) -> Customer:
    metadata = data.metadata or {}
    _check_client_metadata(metadata, {})
    await _ensure_external_id_free(session, scope, data.external_id, None)
    parent_id = await _resolve_parent(session, scope, data.parent_customer_id, data.parent_customer_external_id)
    now = utcnow()
    customer = Customer(
        id=new_id("cust"),
        tenant_id=scope.tenant_id,
        environment_id=scope.environment_id,
        external_id=data.external_id,
        name=data.name,
        email=data.email,
        address_line1=data.address_line1,
        address_line2=data.address_line2,
        address_city=data.address_city,
        address_state=data.address_state,
        address_postal_code=data.address_postal_code,
        address_country=data.address_country,
        metadata_=dict(metadata),
        status="published",
        parent_customer_id=parent_id,
        timezone=data.timezone or DEFAULT_TIMEZONE,
        contact=data.contact,
        contact_persons=_contact_persons(data.contact_persons),
        billing_currency=data.billing_currency,
        tax_treatment=data.tax_treatment,
        tax_rate_overrides=[override.model_dump(exclude_none=True) for override in data.tax_rate_overrides or []],
        onboarding_workflow_name=data.onboarding_workflow_name,
        version=1,
        created_at=now,
        updated_at=now,
        created_by=actor,
        updated_by=actor,
    )
    session.add(customer)
    await _flush_unique(session, data.external_id)
    # The Stripe job commits with the customer, or neither does.
    if data.integration_entity_mapping:
        await outbound.request_link(session, customer, data.integration_entity_mapping[0].stripe_customer_id)
    else:
        await outbound.on_customer_created(session, customer)
    return customer


async def find_for_update(
    session: AsyncSession, scope: Scope, *, customer_id: str | None = None, external_id: str | None = None
) -> Customer:
    customer = None
    if customer_id is not None:
        customer = await repository.get(session, scope, customer_id, for_update=True)
    elif external_id is not None:
        customer = await repository.get_published_by_external_id(session, scope, external_id, for_update=True)
    if customer is None:
        raise NotFound(f"customer {customer_id or external_id} not found")
    return customer


async def update_customer(
    session: AsyncSession, scope: Scope, customer: Customer, data: CustomerUpdate, actor: str
) -> set[str]:
    """Apply the fields present in `data`; returns the names of the fields that actually changed."""
    given = data.model_fields_set
    for name in NOT_NULLABLE:
        if name in given and getattr(data, name) is None:
            raise ValidationFailed(f"{name} must not be blank", {"fields": {name: "must not be blank"}})
    if customer.status != "published":
        raise ValidationFailed(f"customer {customer.id} is archived and cannot be changed")
    if data.external_id is not None and data.external_id != customer.external_id:
        await _ensure_external_id_free(session, scope, data.external_id, customer.id)

    changed: set[str] = set()
    for name in PLAIN_FIELDS:
        if name in given and getattr(customer, name) != getattr(data, name):
            setattr(customer, name, getattr(data, name))
            changed.add(name)
    if "timezone" in given and customer.timezone != (data.timezone or DEFAULT_TIMEZONE):
        customer.timezone = data.timezone or DEFAULT_TIMEZONE
        changed.add("timezone")
    if "contact_persons" in given:
        persons = _contact_persons(data.contact_persons)
        if persons != customer.contact_persons:
            customer.contact_persons = persons
            changed.add("contact_persons")
    if "metadata" in given:
        merged = _merge_client_metadata(data.metadata or {}, customer.metadata_ or {})
        if merged != customer.metadata_:
            customer.metadata_ = merged
            changed.add("metadata")
    if given & {"parent_customer_id", "parent_customer_external_id"}:
        parent_id = await _resolve_parent(session, scope, data.parent_customer_id, data.parent_customer_external_id)
        if parent_id == customer.id:
            raise ValidationFailed("a customer cannot be its own parent")
        if parent_id != customer.parent_customer_id:
            customer.parent_customer_id = parent_id
            changed.add("parent_customer_id")
    if changed:
        customer.version += 1
        customer.updated_at = utcnow()
        customer.updated_by = actor
        await _flush_unique(session, customer.external_id)
    if changed & SYNCED_FIELDS:
        await outbound.on_customer_changed(session, customer)
    if data.integration_entity_mapping:
        await outbound.request_link(session, customer, data.integration_entity_mapping[0].stripe_customer_id)
    return changed


async def archive_customer(session: AsyncSession, customer: Customer, actor: str) -> bool:
    """Archive (FlexPrice's delete). Returns False when the customer was archived already."""
    if customer.status == "archived":
        return False
    customer.status = "archived"
    customer.version += 1
    customer.updated_at = utcnow()
    customer.updated_by = actor
    await session.flush()
    await outbound.on_customer_archived(session, customer)
    return True
