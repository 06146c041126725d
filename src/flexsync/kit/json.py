"""orjson-backed JSON responses: every API response is serialized here, once."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse as StarletteJSONResponse


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS)


class JSONResponse(StarletteJSONResponse):
    # Starlette's JSONResponse by type (FastAPI then documents a route's JSON body, its response_model, rather than
    # a string), orjson's by its bytes.
    def render(self, content: Any) -> bytes:
        return dumps(content)
