"""What the sync did: Stripe webhook deliveries (with Replay) and outbound sync jobs (with Retry now)."""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import RedirectResponse, Response

from flexsync.customers import repository as customers_repository
from flexsync.customers.repository import CustomerQuery
from flexsync.deps import DB
from flexsync.jobs import repository as jobs_repository
from flexsync.jobs import service as jobs_service
from flexsync.jobs.repository import JOB_STATUSES
from flexsync.jobs.schemas import JobStatus
from flexsync.kit.errors import NotFound
from flexsync.kit.pagination import PageNumber, page_count
from flexsync.web.auth import PostedForm, SignedIn, Viewer
from flexsync.web.render import render
from flexsync.webhooks import repository as events_repository
from flexsync.webhooks import service as events_service
from flexsync.webhooks.repository import EVENT_STATUSES
from flexsync.webhooks.schemas import EventStatus

router = APIRouter()

PAGE_SIZE = 50
EVENT_TYPES = ("customer.created", "customer.updated", "customer.deleted")
EventSource = Literal["webhook", "catch_up"]
EVENT_SOURCES = (("webhook", "Webhook"), ("catch_up", "Catch-up"))


async def _customer_names(session: AsyncSession, viewer: Viewer, customer_ids: set[str]) -> dict[str, str]:
    if not customer_ids:
        return {}
    query = CustomerQuery(status="all", customer_ids=sorted(customer_ids))
    customers, _total = await customers_repository.list_page(session, viewer.scope, query, len(customer_ids), 0)
    return {customer.id: customer.name for customer in customers}


@router.get("/sync-jobs")
async def sync_jobs(
    request: Request,
    viewer: SignedIn,
    db: DB,
    status: JobStatus | Literal[""] = "",
    customer_id: Annotated[str, Query(max_length=64)] = "",
    page: PageNumber = 1,
) -> Response:
    async with db.read() as session:
        jobs, total = await jobs_repository.list_page(
            session,
            viewer.scope,
            status=status or None,
            customer_id=customer_id or None,
            limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE,
        )
        customer_names = await _customer_names(session, viewer, {j.customer_id for j in jobs if j.customer_id})
    return render(
        request,
        "sync_jobs.html",
        viewer,
        {
            "jobs": jobs,
            "customer_names": customer_names,
            "total": total,
            "status": status,
            "statuses": JOB_STATUSES,
            "customer_id": customer_id,
            "page": page,
            "pages": page_count(total, PAGE_SIZE),
        },
        nav="sync-jobs",
    )


@router.post("/sync-jobs/{job_id}/retry")
async def retry_sync_job(job_id: str, viewer: SignedIn, _form: PostedForm, db: DB) -> Response:
    async with db.transaction() as session:
        await jobs_service.retry_failed(session, viewer.scope, job_id)
    return RedirectResponse("/sync-jobs?notice=job-retried", status_code=303)


@router.get("/webhook-events")
async def webhook_events(
    request: Request,
    viewer: SignedIn,
    db: DB,
    status: EventStatus | Literal[""] = "",
    type: Annotated[str, Query(max_length=128)] = "",
    source: EventSource | Literal[""] = "",
    page: PageNumber = 1,
) -> Response:
    async with db.read() as session:
        events, total = await events_repository.list_page(
            session, viewer.scope, status or None, type or None, PAGE_SIZE, (page - 1) * PAGE_SIZE, source or None
        )
        customer_names = await _customer_names(session, viewer, {e.customer_id for e in events if e.customer_id})
    return render(
        request,
        "webhook_events.html",
        viewer,
        {
            "events": events,
            "customer_names": customer_names,
            "total": total,
            "status": status,
            "statuses": EVENT_STATUSES,
            "type": type,
            "types": EVENT_TYPES,
            "source": source,
            "sources": EVENT_SOURCES,
            "page": page,
            "pages": page_count(total, PAGE_SIZE),
        },
        nav="webhook-events",
    )


@router.get("/webhook-events/{event_id}")
async def webhook_event(request: Request, event_id: str, viewer: SignedIn, db: DB) -> Response:
    async with db.read() as session:
        event = await events_repository.get(session, viewer.scope, event_id)
        if event is None:
            raise NotFound(f"webhook event {event_id} not found")
        customer_names = await _customer_names(session, viewer, {event.customer_id} if event.customer_id else set())
    payload = orjson.dumps(orjson.loads(event.payload), option=orjson.OPT_INDENT_2).decode()
    return render(
        request,
        "webhook_event.html",
        viewer,
        {"event": event, "payload": payload, "customer_names": customer_names},
        nav="webhook-events",
    )


@router.post("/webhook-events/{event_id}/replay")
async def replay_webhook_event(event_id: str, viewer: SignedIn, _form: PostedForm, db: DB) -> Response:
    """The API's replay: apply the stored event again now."""
    await events_service.replay(db, event_id, viewer.scope)
    return RedirectResponse(f"/webhook-events/{event_id}?notice=event-replayed", status_code=303)
