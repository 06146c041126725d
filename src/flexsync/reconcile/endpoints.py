"""HTTP endpoints of reconciliation: start a run on a connection, follow its progress, read its report."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from flexsync.connections import service as connections
from flexsync.deps import DB, AuthScope
from flexsync.kit.json import JSONResponse
from flexsync.kit.openapi import API_KEY_REQUIRED, errors
from flexsync.kit.pagination import PageQuery, page_body
from flexsync.reconcile import repository, service
from flexsync.reconcile.schemas import ReconcileRequest, Reconciliation, ReconciliationList, RunStatus

router = APIRouter(tags=["reconciliation"], responses=API_KEY_REQUIRED)

START_GUIDE = """
Runs as a background job (a worker carries it out) and answers at once with the run; follow it with
`GET /v1/reconciliations/{id}` until `status` is `succeeded` or `failed`.

- `direction`: `from-stripe` links Stripe customers to existing customers (by Stripe id, then
  metadata.flexprice_customer_id, then email when email_matching is on), imports the rest and copies Stripe's
  newer data; `to-stripe` links the same way and queues pushes for unlinked customers and flexsync's newer data;
  `both` (default) does all of it.
- `dry_run: true` changes nothing and reports what a real run would do.
- An unfinished run (failed, or stopped with its process) is resumed from its cursor when asked for again with
  the same `direction` and `dry_run`; `restart: true` starts over instead.
- 409 while another run of the connection is queued or running.
"""


@router.post(
    "/v1/connections/{connection_id}/reconcile",
    status_code=202,
    response_model=Reconciliation,
    responses=errors(404, (409, "already_exists: another run of the connection is queued or running")),
    summary="Reconcile the connection's Stripe customers with flexsync's customers",
    description=START_GUIDE,
)
async def start_reconciliation(
    connection_id: str,
    scope: AuthScope,
    db: DB,
    body: Annotated[ReconcileRequest | None, Body()] = None,
) -> JSONResponse:
    request = body or ReconcileRequest()
    async with db.transaction() as session:
        connection = await connections.find(session, scope, connection_id, for_update=True)
        started = await service.start(
            session, connection, direction=request.direction, dry_run=request.dry_run, restart=request.restart
        )
        payload = service.run_to_dict(started.run)
    return JSONResponse(payload, status_code=202)


@router.get("/v1/reconciliations", response_model=ReconciliationList)
async def list_reconciliations(
    scope: AuthScope,
    db: DB,
    page: PageQuery,
    connection_id: str | None = None,
    status: RunStatus | None = None,
) -> JSONResponse:
    """Newest first."""
    async with db.read() as session:
        runs, total = await repository.list_page(
            session, scope, connection_id=connection_id, status=status, limit=page.limit, offset=page.offset
        )
        return JSONResponse(page_body([service.run_to_dict(run) for run in runs], total, page))


@router.get("/v1/reconciliations/{run_id}", response_model=Reconciliation, responses=errors(404))
async def get_reconciliation(run_id: str, scope: AuthScope, db: DB) -> JSONResponse:
    """Status, progress (`phase`, `cursor`, `processed`) and the report (`counts`, `conflicts`)."""
    async with db.read() as session:
        return JSONResponse(service.run_to_dict(await service.find(session, scope, run_id)))
