"""The one list shape: {"items": [...], "pagination": {"total", "limit", "offset"}}."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Depends, Query
from pydantic import BaseModel, Field

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


class Page(BaseModel):
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    offset: int = Field(0, ge=0)


def page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Page:
    return Page(limit=limit, offset=offset)


PageQuery = Annotated[Page, Depends(page_params)]


def page_count(total: int, size: int) -> int:
    """How many pages of `size` hold `total` items (at least one, for an empty list)."""
    return max(1, -(-total // size))


def page_body(items: Sequence[Any], total: int, page: Page) -> dict[str, Any]:
    return {"items": list(items), "pagination": {"total": total, "limit": page.limit, "offset": page.offset}}
