"""Reconciliation: start a dry run or a real run on the environment's Stripe connection, watch it, read its report."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from flexsync.connections import repository as connections_repository
from flexsync.connections import service as connections_service
from flexsync.deps import DB
from flexsync.kit.errors import APIError, ValidationFailed
from flexsync.kit.pagination import PageNumber, page_count
from flexsync.reconcile import repository, service
from flexsync.reconcile.schemas import ReconcileRequest
from flexsync.web import forms
from flexsync.web.auth import PostedForm, SignedIn, Viewer
from flexsync.web.render import render

router = APIRouter()

PAGE = "/reconciliation"
PAGE_SIZE = 25
DIRECTIONS = (
    ("both", "Both ways: link, import from Stripe, push to Stripe"),
    ("from-stripe", "From Stripe: link, import and take Stripe's newer data"),
    ("to-stripe", "To Stripe: link, and push unlinked customers and flexsync's newer data"),
)
UNFINISHED = ("pending", "running")


async def _runs_page(
    request: Request,
    viewer: Viewer,
    db: DB,
    page: int,
    state: forms.FormState | None = None,
    status_code: int = 200,
) -> Response:
    scope = viewer.scope
    async with db.read() as session:
        connection = await connections_repository.get_live_connection(session, scope.tenant_id, scope.environment_id)
        runs, total = await repository.list_page(
            session, scope, connection_id=None, status=None, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
        )
    return render(
        request,
        "reconciliation/list.html",
        viewer,
        {
            "connection": connection,
            "runs": [service.run_to_dict(run) for run in runs],
            "total": total,
            "page": page,
            "pages": page_count(total, PAGE_SIZE),
            "directions": DIRECTIONS,
            "state": state or forms.FormState(values={"direction": "both", "dry_run": "on"}),
            "labels": {"direction": "Direction", "dry_run": "Dry run", "restart": "Start over"},
        },
        nav="reconciliation",
        status_code=status_code,
    )


@router.get(PAGE)
async def reconciliation_runs(request: Request, viewer: SignedIn, db: DB, page: PageNumber = 1) -> Response:
    return await _runs_page(request, viewer, db, page)


@router.post(PAGE)
async def start_reconciliation(request: Request, viewer: SignedIn, form: PostedForm, db: DB) -> Response:
    state = forms.FormState(values=forms.text_values(form, ["direction"]))
    flags = {name: form.get(name) == "on" for name in ("dry_run", "restart")}
    state.values.update({name: "on" for name, on in flags.items() if on})
    body: dict[str, Any] = {"direction": state.values["direction"], **flags}
    data = forms.build(ReconcileRequest, body, state)
    if data is None:
        return await _runs_page(request, viewer, db, 1, state, status_code=400)
    scope = viewer.scope
    try:
        async with db.transaction() as session:
            live = await connections_repository.get_live_connection(session, scope.tenant_id, scope.environment_id)
            if live is None:
                raise ValidationFailed("this environment has no Stripe connection: add one first")
            connection = await connections_service.find(session, scope, live.id, for_update=True)
            started = await service.start(
                session, connection, direction=data.direction, dry_run=data.dry_run, restart=data.restart
            )
    except APIError as exc:
        state.errors.update(forms.api_errors(exc))
        return await _runs_page(request, viewer, db, 1, state, status_code=exc.status)
    notice = "reconciliation-resumed" if started.resumed else "reconciliation-started"
    return RedirectResponse(f"{PAGE}/{started.run.id}?notice={notice}", status_code=303)


@router.get(PAGE + "/{run_id}")
async def reconciliation_run(request: Request, run_id: str, viewer: SignedIn, db: DB) -> Response:
    async with db.read() as session:
        run = service.run_to_dict(await service.find(session, viewer.scope, run_id))
    return render(
        request,
        "reconciliation/run.html",
        viewer,
        {"run": run, "in_progress": run["status"] in UNFINISHED},
        nav="reconciliation",
    )
