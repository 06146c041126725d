"""A connection's sync settings: every option, with its default, in one model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from flexsync.kit.schemas import StrictModel


class ConnectionSettings(StrictModel):
    inbound_enabled: bool = True
    outbound_enabled: bool = True
    push_updates: bool = True
    email_matching: bool = False
    on_stripe_delete: Literal["ignore", "unlink", "archive"] = "ignore"
    on_customer_archive: Literal["ignore", "delete_in_stripe"] = "ignore"
    # When catch-up finds its cursor older than the 30 days of events Stripe keeps: `warn` (event log, metric,
    # dashboard) or also start a from-Stripe reconciliation.
    on_catch_up_gap: Literal["warn", "reconcile"] = "warn"
    # Stripe requests per second for this connection; None means Stripe's default for the key's mode.
    rate_limit: float | None = Field(default=None, gt=0, le=1000)


def effective_settings(stored: Mapping[str, Any] | None) -> ConnectionSettings:
    """Stored settings with defaults filled in; keys no longer known are ignored."""
    known = {k: v for k, v in (stored or {}).items() if k in ConnectionSettings.model_fields}
    return ConnectionSettings.model_validate(known)
