"""The bases of request bodies (unknown fields and NUL characters refused) and of documented response bodies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from flexsync.kit.text import NUL_PROBLEM, contains_nul


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if contains_nul(value):
            raise ValueError(NUL_PROBLEM)
        return value


def not_nullable(*names: str) -> Callable[[dict[str, Any]], None]:
    """For a partial update's `model_config` (`json_schema_extra`): these fields may be left out but not sent as
    null, which the service refuses with a 400 naming the field; the document shows them without the null."""

    def edit(schema: dict[str, Any]) -> None:
        for name in names:
            field = schema["properties"][name]
            branches = [branch for branch in field.pop("anyOf") if branch.get("type") != "null"]
            if len(branches) == 1:
                field.update(branches[0])
            else:
                field["anyOf"] = branches

    return edit


class ResponseModel(BaseModel):
    """A response body as /openapi.json shows it. Documentation only: endpoints build their answers as dicts and
    write them with orjson, never through these models. Closed (no other keys), so that a key added to an answer
    but not to its model fails the OpenAPI conformance test instead of going undocumented."""

    model_config = ConfigDict(extra="forbid")
