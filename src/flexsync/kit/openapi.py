"""/openapi.json: what FastAPI infers from the routes, plus the answers the app's own machinery gives.

A route documents its success body with `response_model` (documentation only: every endpoint returns its own
JSONResponse, which FastAPI passes on as it is, neither validated nor serialized again) and the errors its own
rules raise with `responses=errors(404, ...)`. `install` adds, to every operation, the errors that come from
elsewhere:

- 400 `validation_error` where FastAPI would show 422: the app answers every invalid request with 400
  (kit.errors), so no operation ever answers 422;
- 413 `payload_too_large` where a request body is taken (kit.middleware.BodySizeLimit);
- 500 `internal_error` on every `/v1/` operation (an unexpected failure), and 503 `internal_error` with
  `Retry-After` (the database busy or unreachable for now: kit.middleware.UnexpectedErrors);
- the API key's security requirement on every operation that documents 401, which routers of authenticated
  routes declare once, with `responses=API_KEY_REQUIRED`;
- the `Idempotency-Key` header on every `/v1/` write (POST, PUT, DELETE; Stripe's webhook aside), its
  `idempotency_error` answers (400, 409) and the `Idempotent-Replayed` header of a replayed answer
  (flexsync/idempotency).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from pydantic import Field

from flexsync.kit.errors import ErrorCode
from flexsync.kit.middleware import MAX_BODY_BYTES
from flexsync.kit.schemas import ResponseModel

Responses = dict[int | str, dict[str, Any]]

REF_PREFIX = "#/components/schemas/"

DESCRIPTIONS = {
    400: "validation_error: the request is invalid; `details.fields` names each field in error and its problem",
    401: "unauthorized: the API key is missing, invalid or revoked",
    404: "not_found: no such object in the API key's environment",
    409: "already_exists",
    413: f"payload_too_large: the request body is over {MAX_BODY_BYTES // 2**20} MiB",
    500: "internal_error: an unexpected failure",
    503: "internal_error: the database is busy or unreachable for now; send the request again after `Retry-After` "
    "seconds",
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Makes the write safe to send again: a retry with the same key and the same method, path, query and body, "
        "within 24 hours, answers what the first request answered (with `Idempotent-Replayed: true`) and changes "
        "nothing. Keys belong to the API key's environment; use a new one (a UUID) for each new request."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
IDEMPOTENCY_ERRORS = {
    400: "idempotency_error: the Idempotency-Key was used for another request",
    409: "idempotency_error: a request with this Idempotency-Key is still being processed",
}
REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer of an earlier request with the same Idempotency-Key.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}
IDEMPOTENT_METHODS = ("post", "put", "delete")
STRIPE_WEBHOOK = "/v1/webhooks/stripe/"
RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before sending the request again.", "schema": {"type": "integer"}}
}

SECURITY_SCHEMES = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "An API key (`fsk_…`)."},
    "Bearer": {"type": "http", "scheme": "bearer", "description": "The same API key, as a Bearer token."},
}
# Either scheme will do: two requirement objects, not one naming both.
SECURITY: list[dict[str, list[str]]] = [{name: []} for name in SECURITY_SCHEMES]


class FlexPriceError(ResponseModel):
    message: str
    internal_error: None


class ErrorBody(ResponseModel):
    """Every error answer. `success` and `error` repeat the message in FlexPrice's shape, which its SDK reads."""

    code: ErrorCode
    message: str
    http_status_code: int
    details: dict[str, Any] = Field(description="Always present, possibly empty.")
    success: Literal[False]
    error: FlexPriceError


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": f"{REF_PREFIX}ErrorBody"}}}}


def errors(*statuses: int | tuple[int, str]) -> Responses:
    """A route's `responses=`: the error shape under each status, described by default or as given."""
    documented: Responses = {}
    for entry in statuses:
        status, description = entry if isinstance(entry, tuple) else (entry, DESCRIPTIONS[entry])
        documented[status] = _error(description)
    return documented


API_KEY_REQUIRED = errors(401)


def _idempotent(operation: dict[str, Any], responses: Responses) -> None:
    operation.setdefault("parameters", []).append(IDEMPOTENCY_KEY)
    for code, description in IDEMPOTENCY_ERRORS.items():
        documented = responses.get(str(code))
        if documented is None:
            responses[str(code)] = _error(description)
        else:
            responses[str(code)] = {**documented, "description": f"{documented['description']}; or {description}"}
    for status, response in responses.items():
        if str(status).startswith("2"):
            responses[status] = {**response, "headers": {**response.get("headers", {}), **REPLAYED}}


def _amend(document: dict[str, Any]) -> dict[str, Any]:
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", _error(DESCRIPTIONS[400]))
            if "requestBody" in operation:
                responses.setdefault("413", _error(DESCRIPTIONS[413]))
            if path.startswith("/v1/") and not path.startswith(STRIPE_WEBHOOK) and method in IDEMPOTENT_METHODS:
                _idempotent(operation, responses)
            if path.startswith("/v1/"):
                responses.setdefault("500", _error(DESCRIPTIONS[500]))
                responses.setdefault("503", {**_error(DESCRIPTIONS[503]), "headers": RETRY_AFTER})
            if "401" in responses:
                operation["security"] = SECURITY
            operation["responses"] = dict(sorted(responses.items()))
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    error_schema = ErrorBody.model_json_schema(ref_template=REF_PREFIX + "{model}", mode="serialization")
    schemas.update(error_schema.pop("$defs", {}))
    schemas["ErrorBody"] = error_schema
    components["securitySchemes"] = SECURITY_SCHEMES
    return document


def install(app: FastAPI) -> None:
    """Serve the amended document at /openapi.json (and so in /docs), built once, on first use."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _amend(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
