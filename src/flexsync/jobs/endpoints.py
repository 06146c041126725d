"""HTTP endpoints for outbound sync jobs (`/v1/sync-jobs`): what ran, what failed and why, retry."""

from __future__ import annotations

from fastapi import APIRouter

from flexsync.deps import DB, AuthScope
from flexsync.jobs import repository, service
from flexsync.jobs.schemas import JobStatus, SyncJob, SyncJobList
from flexsync.kit.errors import NotFound
from flexsync.kit.json import JSONResponse
from flexsync.kit.openapi import API_KEY_REQUIRED, errors
from flexsync.kit.pagination import PageQuery, page_body

router = APIRouter(prefix="/v1/sync-jobs", tags=["sync jobs"], responses=API_KEY_REQUIRED)


@router.get("", response_model=SyncJobList)
async def list_sync_jobs(
    scope: AuthScope,
    db: DB,
    page: PageQuery,
    status: JobStatus | None = None,
    customer_id: str | None = None,
) -> JSONResponse:
    """Newest first."""
    async with db.read() as session:
        items, total = await repository.list_page(
            session, scope, status=status, customer_id=customer_id, limit=page.limit, offset=page.offset
        )
        return JSONResponse(page_body([service.job_to_dict(job) for job in items], total, page))


@router.get("/{job_id}", response_model=SyncJob, responses=errors(404))
async def get_sync_job(job_id: str, scope: AuthScope, db: DB) -> JSONResponse:
    async with db.read() as session:
        job = await repository.get(session, scope, job_id)
        if job is None:
            raise NotFound(f"sync job {job_id} not found")
        return JSONResponse(service.job_to_dict(job))


@router.post("/{job_id}/retry", status_code=202, response_model=SyncJob, responses=errors(404))
async def retry_sync_job(job_id: str, scope: AuthScope, db: DB) -> JSONResponse:
    """Run a failed job again now (400 unless it failed)."""
    async with db.transaction() as session:
        job = await service.retry_failed(session, scope, job_id)
        body = service.job_to_dict(job)
    return JSONResponse(body, status_code=202)
