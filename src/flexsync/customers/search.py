"""FlexPrice's customer filter (`POST /v1/customers/search`) checked and turned into a `CustomerQuery`.

FlexPrice's generic conditions name a customer field, an operator and a typed value. Which operator fits
which field is decided here, once, so that a condition the database could only misread (a text compared
as a number, a field that does not exist) is refused with a message naming it instead of being ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from flexsync.customers.repository import Condition, CustomerQuery
from flexsync.customers.schemas import CustomerSearch, FilterCondition, SortSpec
from flexsync.kit.errors import ValidationFailed

# Fields of the customer that conditions and sorts may name, by kind.
TEXT_FIELDS = (
    "id",
    "external_id",
    "name",
    "email",
    "contact",
    "address_line1",
    "address_line2",
    "address_city",
    "address_state",
    "address_postal_code",
    "address_country",
    "timezone",
    "billing_currency",
    "tax_treatment",
    "status",
    "parent_customer_id",
    "onboarding_workflow_name",
    "created_by",
    "updated_by",
)
TIME_FIELDS = ("created_at", "updated_at")
FIELDS = (*TEXT_FIELDS, *TIME_FIELDS)
ValueKind = Literal["string", "array", "date"]
# operator -> the value it takes, per kind of field.
TEXT_OPERATORS: dict[str, ValueKind] = {
    "eq": "string",
    "contains": "string",
    "not_contains": "string",
    "in": "array",
    "not_in": "array",
}
TIME_OPERATORS: dict[str, ValueKind] = {
    "eq": "date",
    "before": "date",
    "after": "date",
    "lt": "date",
    "gt": "date",
    "gte": "date",
}
EXPANDABLE = ("integrations",)


def _refuse(path: str, problem: str) -> ValidationFailed:
    return ValidationFailed(f"{path}: {problem}", {"fields": {path: problem}})


def _condition(index: int, condition: FilterCondition) -> Condition:
    path = f"filters.{index}"
    if condition.field is None:
        raise _refuse(f"{path}.field", "required: the customer field to filter on")
    if condition.field not in FIELDS:
        hint = "; filter metadata with `metadata`" if condition.field == "metadata" else ""
        raise _refuse(f"{path}.field", f"unknown customer field {condition.field!r}{hint}; known: {', '.join(FIELDS)}")
    operators = TIME_OPERATORS if condition.field in TIME_FIELDS else TEXT_OPERATORS
    if condition.operator is None:
        raise _refuse(f"{path}.operator", f"required: one of {', '.join(operators)}")
    kind = operators.get(condition.operator)
    if kind is None:
        what = "a time" if condition.field in TIME_FIELDS else "text"
        raise _refuse(
            f"{path}.operator",
            f"{condition.operator!r} does not apply to {condition.field} ({what}); use one of {', '.join(operators)}",
        )
    if condition.data_type is not None and condition.data_type != kind:
        raise _refuse(
            f"{path}.data_type",
            f"{condition.field} {condition.operator} takes data_type {kind}, not {condition.data_type}",
        )
    value: Any = getattr(condition.value, kind, None) if condition.value is not None else None
    if value is None:
        raise _refuse(
            f"{path}.value.{kind}", f"required: {condition.field} {condition.operator} compares with a {kind}"
        )
    return Condition(condition.field, condition.operator, value)


def _sort(index: int, spec: SortSpec) -> tuple[str, str]:
    if spec.field not in FIELDS:
        raise _refuse(f"sort.{index}.field", f"unknown customer field {spec.field!r}; known: {', '.join(FIELDS)}")
    return spec.field, spec.direction


def parse_expand(expand: str | None) -> frozenset[str]:
    """FlexPrice's comma-separated `expand`; customers expand `integrations` only."""
    fields = frozenset(part.strip() for part in (expand or "").split(",") if part.strip())
    for field in fields:
        if field not in EXPANDABLE:
            raise _refuse("expand", f"{field!r} cannot be expanded on a customer; it can be: {', '.join(EXPANDABLE)}")
    return fields


def _ids(values: Sequence[str] | None) -> Sequence[str] | None:
    """FlexPrice's rule: an empty list filters nothing out."""
    return values if values else None


def customer_query(body: CustomerSearch) -> CustomerQuery:
    if body.start_time is not None and body.end_time is not None and body.end_time < body.start_time:
        raise _refuse("end_time", "must not be before start_time")
    external_ids = list(body.external_ids or [])
    if body.external_id is not None:
        external_ids.append(body.external_id)
    return CustomerQuery(
        status=body.status or "published",
        customer_ids=_ids(body.customer_ids),
        external_ids=_ids(external_ids),
        parent_customer_ids=_ids(body.parent_customer_ids),
        email=body.email,
        metadata=dict(body.metadata) if body.metadata else None,
        conditions=[_condition(i, condition) for i, condition in enumerate(body.filters or [])],
        created_from=body.start_time,
        created_to=body.end_time,
        sort=[_sort(i, spec) for i, spec in enumerate(body.sort or [])],
        order=body.order,
    )
