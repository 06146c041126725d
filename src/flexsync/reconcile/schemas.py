"""The request body of `POST /v1/connections/{id}/reconcile`."""

from __future__ import annotations

from pydantic import StrictBool

from flexsync.kit.schemas import StrictModel
from flexsync.stripe.reconcile import Direction


class ReconcileRequest(StrictModel):
    dry_run: StrictBool = False
    direction: Direction = "both"
    # Start from the beginning even when the connection's last run stopped unfinished (it is closed instead).
    restart: StrictBool = False
