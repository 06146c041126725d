"""structlog setup, with a last processor that scrubs anything shaped like a Stripe secret."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

SECRET_PATTERN = re.compile(r"\b(sk|rk|whsec)_(test_|live_)?[A-Za-z0-9]+")


def redact(text: str) -> str:
    return SECRET_PATTERN.sub(lambda m: f"{m.group(1)}_{m.group(2) or ''}[redacted]", text)


def describe_error(exc: BaseException) -> str:
    """An error for a log line or an event's last_error: the driver's own message (SQLAlchemy's `orig`), its first
    line only (without the statement or values), redacted."""
    origin = getattr(exc, "orig", None) or exc
    message = str(origin).strip().splitlines()[0] if str(origin).strip() else ""
    return redact(f"{type(origin).__name__}: {message}"[:500])


def _scrub(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact(value)
    return event_dict


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
