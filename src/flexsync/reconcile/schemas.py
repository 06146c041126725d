"""The request body of `POST /v1/connections/{id}/reconcile`, and runs as the API shows them (for /openapi.json)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, StrictBool

from flexsync.kit.pagination import ListPage
from flexsync.kit.schemas import ResponseModel, StrictModel
from flexsync.sync.reconcile import Direction, Phase

RunStatus = Literal["pending", "running", "succeeded", "failed"]


class ReconcileRequest(StrictModel):
    dry_run: StrictBool = False
    direction: Direction = "both"
    # Start from the beginning even when the connection's last run stopped unfinished (it is closed instead).
    restart: StrictBool = False


class ReconciliationProgress(ResponseModel):
    phase: Phase = Field(description="`stripe` (Stripe's customers), then `customers` (unlinked ones), then `done`.")
    cursor: str | None = Field(description="The last item of the last page done in this phase.")
    processed: int


class ReconciliationCounts(ResponseModel):
    """sync.reconcile.COUNT_KEYS."""

    linked: int
    imported: int
    updated: int
    pushed: int
    unchanged: int
    conflicts: int


class ReconciliationConflict(ResponseModel):
    kind: Literal["already_linked", "ambiguous_email", "archived_customer"]
    stripe_customer_ids: list[str]
    customer_ids: list[str]
    message: str


class Reconciliation(ResponseModel):
    """A run (`service.run_to_dict`): where it stands (`progress`) and its report (`counts`, `conflicts`)."""

    id: str
    connection_id: str
    direction: Direction
    dry_run: bool
    status: RunStatus
    progress: ReconciliationProgress
    counts: ReconciliationCounts
    conflicts: list[ReconciliationConflict]
    error: str | None
    job_id: str | None
    tenant_id: str
    environment_id: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class ReconciliationList(ListPage[Reconciliation]):
    pass
