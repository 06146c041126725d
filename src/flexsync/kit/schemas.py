"""The bases of request bodies (unknown fields and NUL characters refused) and of documented response bodies."""

from __future__ import annotations

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


class ResponseModel(BaseModel):
    """A response body as /openapi.json shows it. Documentation only: endpoints build their answers as dicts and
    write them with orjson, never through these models. Closed (no other keys), so that a key added to an answer
    but not to its model fails the OpenAPI conformance test instead of going undocumented."""

    model_config = ConfigDict(extra="forbid")
