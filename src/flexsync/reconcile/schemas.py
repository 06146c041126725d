"""The request body of `POST /v1/connections/{id}/reconcile`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, StrictBool

from flexsync.stripe.reconcile import Direction


class ReconcileRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dry_run: StrictBool = False
    direction: Direction = "both"
    # Start from the beginning even when the connection's last run stopped unfinished (it is closed instead).
    restart: StrictBool = False
