"""The one HTTP error type and the contract's error shape. Free of the web framework, so that commands and
services that raise these errors load quickly (kit/error_responses.py turns them into answers)."""

from __future__ import annotations

from typing import Any, Literal

ErrorCode = Literal[
    "validation_error",
    "unauthorized",
    "permission_denied",
    "not_found",
    "already_exists",
    "payload_too_large",
    "too_many_requests",
    "idempotency_error",
    "internal_error",
]

CODES_BY_STATUS: dict[int, ErrorCode] = {
    400: "validation_error",
    401: "unauthorized",
    403: "permission_denied",
    404: "not_found",
    405: "validation_error",
    409: "already_exists",
    413: "payload_too_large",
    415: "validation_error",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
}


class APIError(Exception):
    def __init__(
        self, status: int, message: str, *, code: ErrorCode | None = None, details: dict[str, Any] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.code: ErrorCode = code or CODES_BY_STATUS.get(status, "internal_error")
        self.message = message
        self.details = details or {}


class ValidationFailed(APIError):
    def __init__(self, message: str, details: dict[str, Any] | None = None):
        super().__init__(400, message, details=details)


class NotFound(APIError):
    def __init__(self, message: str = "not found", details: dict[str, Any] | None = None):
        super().__init__(404, message, details=details)


class AlreadyExists(APIError):
    def __init__(self, message: str, details: dict[str, Any] | None = None):
        super().__init__(409, message, details=details)


class Unauthorized(APIError):
    def __init__(self, message: str = "a valid API key is required"):
        super().__init__(401, message)


def error_body(status: int, code: ErrorCode, message: str, details: dict[str, Any]) -> dict[str, Any]:
    # `success` and `error` repeat the message in FlexPrice's own error shape, which its SDK parses.
    return {
        "code": code,
        "message": message,
        "http_status_code": status,
        "details": details,
        "success": False,
        "error": {"message": message, "internal_error": None},
    }


def _field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def describe_validation_errors(errors: list[Any]) -> tuple[str, dict[str, Any]]:
    """Pydantic's error list -> a readable message and a `details.fields` map of field -> problem."""
    fields: dict[str, str] = {}
    for err in errors:
        path = _field_path(err.get("loc", ()))
        if err.get("type") == "json_invalid":
            return "request body is not valid JSON", {"fields": {"body": "malformed JSON"}}
        if err.get("type") == "extra_forbidden":
            fields[path] = "unknown field"
            continue
        msg = str(err.get("msg", "invalid value"))
        fields.setdefault(path, msg.removeprefix("Value error, "))
    message = "; ".join(f"{k}: {v}" for k, v in fields.items()) or "invalid request"
    return message, {"fields": fields}
