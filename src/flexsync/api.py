"""The ASGI application: API routers, operations endpoints, and the process's shared resources."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Literal

import structlog
from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from starlette.responses import PlainTextResponse, Response

from flexsync import __version__
from flexsync.config import Settings, get_settings
from flexsync.connections import managed_endpoint
from flexsync.connections.endpoints import router as connections_router
from flexsync.context import AppContext, open_context
from flexsync.customers.endpoints import router as customers_router
from flexsync.db import temporary_failure
from flexsync.idempotency.middleware import IdempotentWrites
from flexsync.integrations.endpoints import router as integrations_router
from flexsync.jobs.endpoints import router as sync_jobs_router
from flexsync.jobs.worker import Worker
from flexsync.kit import openapi
from flexsync.kit.error_responses import error_response, install_error_handlers
from flexsync.kit.json import JSONResponse
from flexsync.kit.middleware import BodySizeLimit, DefaultJSONContentType, NoNulInURL, UnexpectedErrors
from flexsync.kit.schemas import ResponseModel
from flexsync.metrics import exposition
from flexsync.reconcile.endpoints import router as reconcile_router
from flexsync.stripe.calls import StripeCaller
from flexsync.sync.health import refresh_gauges
from flexsync.web.app import install_dashboard
from flexsync.webhooks import receiver
from flexsync.webhooks.endpoints import router as webhook_events_router
from flexsync.webhooks.pipeline import WebhookPipeline
from flexsync.wiring import job_registry

log = structlog.get_logger(__name__)


class Health(ResponseModel):
    status: Literal["ok"]


class Readiness(ResponseModel):
    status: Literal["ready"]
    database: Literal["sqlite", "postgresql"]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.db = open_context(settings)
        worker = (
            Worker(app.state.db, job_registry(), concurrency=settings.worker_concurrency)
            if settings.run_worker
            else None
        )
        webhooks = app.state.webhooks = WebhookPipeline(app.state.db)
        # For the requests that call Stripe themselves (linking a customer through the integrations API).
        stripe_caller = app.state.stripe_caller = StripeCaller(settings, app.state.db.sessions)
        try:
            webhooks.start()
            if worker is not None:
                await worker.start()
            yield
        finally:
            if worker is not None:
                await worker.stop()
            await webhooks.stop()
            await stripe_caller.aclose()
            await app.state.db.close()

    app = FastAPI(
        title="flexsync",
        version=__version__,
        description="Two-way customer sync between a FlexPrice-compatible customer API and Stripe.",
        lifespan=lifespan,
        default_response_class=JSONResponse,
        # flexsync reports through Prometheus (/metrics); FastAPI's own OpenTelemetry hooks would look up the
        # global providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    openapi.install(app)
    app.add_middleware(IdempotentWrites)
    app.add_middleware(DefaultJSONContentType)
    app.add_middleware(BodySizeLimit)
    # Stripe's deliveries, the busiest route, are answered by this middleware, ahead of the app's own stack
    # (see WebhookRoute); only a URL holding a NUL character is turned away before it.
    app.add_middleware(receiver.WebhookRoute)
    app.add_middleware(NoNulInURL)
    app.add_middleware(
        UnexpectedErrors,
        temporary=partial(temporary_failure, sqlite_busy_timeout_seconds=settings.sqlite_busy_timeout_seconds),
    )
    app.include_router(receiver.router)
    app.include_router(customers_router)
    app.include_router(integrations_router)
    app.include_router(sync_jobs_router)
    app.include_router(connections_router)
    app.include_router(webhook_events_router)
    app.include_router(reconcile_router)

    # HEAD too: some load balancers probe with it. A route of its own per method, so each operation has its own id
    # in /openapi.json (one route for both gave the two the same id, which client generators refuse).
    @app.get("/healthz", tags=["operations"], response_model=Health)
    @app.head("/healthz", tags=["operations"], response_model=Health)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    readiness: dict[str, Any] = {
        "tags": ["operations"],
        "response_model": Readiness,
        "responses": openapi.errors((503, "internal_error: the database is unreachable")),
    }

    @app.get("/readyz", **readiness)
    @app.head("/readyz", **readiness)
    async def readyz() -> Response:
        db: AppContext = app.state.db
        try:
            async with db.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as exc:  # any failure to reach the database means not ready
            return error_response(503, "internal_error", f"database unreachable: {type(exc).__name__}")
        return JSONResponse({"status": "ready", "database": db.engine.dialect.name})

    # Documented as text (Prometheus' format); the answer's content type also names the format's version.
    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def metrics() -> Response:
        try:
            await managed_endpoint.publish_status_metric(app.state.db)
            await refresh_gauges(app.state.db)
        except Exception:  # the database is away: the process's own counters are still worth scraping
            log.warning("reading delivery health for /metrics failed", exc_info=True)
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)

    install_dashboard(app)
    return app
