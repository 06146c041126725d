"""The one list shape: {"items": [...], "pagination": {"total", "limit", "offset"}}."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel, Field

from flexsync.kit.schemas import ResponseModel
from flexsync.models import MAX_INT64

Item = TypeVar("Item", bound=BaseModel)

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
# The largest OFFSET both databases take; beyond it PostgreSQL fails the query.
MAX_OFFSET = MAX_INT64
# The dashboard's page numbers: far beyond any list, and within MAX_OFFSET at any page size.
MAX_PAGE_NUMBER = 1_000_000_000


class Page(BaseModel):
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)


def page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Page:
    return Page(limit=limit, offset=offset)


PageQuery = Annotated[Page, Depends(page_params)]
PageNumber = Annotated[int, Query(ge=1, le=MAX_PAGE_NUMBER)]


def page_count(total: int, size: int) -> int:
    """How many pages of `size` hold `total` items (at least one, for an empty list)."""
    return max(1, -(-total // size))


class Pagination(ResponseModel):
    total: int = Field(description="How many items match, on every page.")
    limit: int
    offset: int


class ListPage(ResponseModel, Generic[Item]):
    """The documented shape of `page_body`: subclass it once per item type, to give the list its own name."""

    items: list[Item]
    pagination: Pagination


def page_body(items: Sequence[Any], total: int, page: Page) -> dict[str, Any]:
    return {"items": list(items), "pagination": {"total": total, "limit": page.limit, "offset": page.offset}}
