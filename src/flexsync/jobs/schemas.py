"""Sync jobs as the API shows them (`service.job_to_dict`), for /openapi.json."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from flexsync.kit.pagination import ListPage
from flexsync.kit.schemas import ResponseModel

JobStatus = Literal["pending", "running", "succeeded", "failed"]
# sync.outbound.Action, and reconcile.service.JOB_KIND.
JobKind = Literal["create", "update", "delete", "link", "reconcile"]


class SyncJob(ResponseModel):
    id: str
    kind: JobKind
    status: JobStatus
    customer_id: str | None
    connection_id: str | None
    attempts: int
    max_attempts: int
    run_at: datetime = Field(description="When a pending job runs next (its retry time after a failure).")
    last_error: str | None
    result: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class SyncJobList(ListPage[SyncJob]):
    pass
