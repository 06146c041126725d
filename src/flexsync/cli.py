"""The `flexsync` command line: serve, migrate, and manage tenants, environments and API keys."""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console

from flexsync.limits import MAX_WORKER_CONCURRENCY, MIN_WEBHOOK_EVENT_RETENTION_DAYS, RETENTION_REASON

# What a command needs is imported when it runs, so that `flexsync --help` and the short commands start quickly:
# the API, the database, Stripe and the settings' machinery are each a good part of a second to import.
if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from flexsync.config import Settings
    from flexsync.context import AppContext
    from flexsync.crypto import SecretBox
    from flexsync.tenancy.service import Bootstrap

T = TypeVar("T")

# Allocations between collections of the youngest generation in long-running processes (Python's default: 700).
GC_YOUNG_THRESHOLD = 50_000
# `serve --processes`: more than a machine's cores only adds memory and database connections.
MAX_PROCESSES = 64

app = typer.Typer(
    help="flexsync: two-way customer sync between FlexPrice-style billing and Stripe.", no_args_is_help=True
)
tenant_app = typer.Typer(help="Manage tenants.", no_args_is_help=True)
environment_app = typer.Typer(help="Manage environments.", no_args_is_help=True)
api_key_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(environment_app, name="environment")
app.add_typer(api_key_app, name="api-key")
events_app = typer.Typer(help="Stripe webhook events.", no_args_is_help=True)
app.add_typer(events_app, name="events")
connections_app = typer.Typer(help="Stripe connections.", no_args_is_help=True)
app.add_typer(connections_app, name="connections")

console = Console()
err_console = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]


def _settings() -> Settings:
    from flexsync.config import get_settings

    return get_settings()


def _in_transaction(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one unit of work; an APIError it raises ends the command with its message."""
    from flexsync.kit.errors import APIError

    async def run(db: AppContext) -> T:
        async with db.transaction() as session:
            return await work(session)

    try:
        return _with_database(settings, run, box_needed=False)
    except APIError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(code=1) from None


def _with_database(settings: Settings, work: Callable[[AppContext], Awaitable[T]], *, box_needed: bool = True) -> T:
    """Run `work` with a process's database resources (engine, sessions, secret box), disposed of afterwards.
    Without `box_needed` the secret box is built only if the work uses it."""
    import asyncio

    from flexsync.context import open_context

    box = _usable_secret_box(settings) if box_needed else None

    async def runner() -> T:
        db = open_context(settings, null_pool=True, box=box, lazy_box=not box_needed)
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(runner())


def _emit(as_json: bool, data: dict[str, Any], lines: list[str]) -> None:
    if as_json:
        typer.echo(json.dumps(data))
    else:
        for line in lines:
            console.print(line, highlight=False, soft_wrap=True)


@app.command("migrate")
def migrate_command() -> None:
    """Apply database migrations."""
    from flexsync.db import migrate

    settings = _settings()
    migrate(settings.database_url)
    console.print("database is up to date")


@tenant_app.command("create")
def tenant_create(
    name: str,
    id: Annotated[str | None, typer.Option("--id", help="Tenant id (default: tenant_<ULID>).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a tenant."""
    from flexsync.tenancy import service as tenancy

    tenant = _in_transaction(_settings(), lambda s: tenancy.create_tenant(s, name, id))
    _emit(as_json, {"tenant_id": tenant.id}, [f"tenant created: {tenant.id}"])


@environment_app.command("create")
def environment_create(
    name: str,
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant id.")],
    id: Annotated[str | None, typer.Option("--id", help="Environment id (default: env_<ULID>).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an environment in a tenant."""
    from flexsync.tenancy import service as tenancy

    settings = _settings()
    env = _in_transaction(settings, lambda s: tenancy.create_environment(s, tenant, name, id))
    url = settings.webhook_url(tenant, env.id)
    _emit(
        as_json,
        {"tenant_id": tenant, "environment_id": env.id, "webhook_url": url},
        [f"environment created: {env.id}", f"Stripe webhook URL: {url}"],
    )


@api_key_app.command("create")
def api_key_create(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant id.")],
    environment: Annotated[str, typer.Option("--environment", help="Environment id.")],
    name: Annotated[str, typer.Option("--name", help="A label for the key.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Create an API key for one tenant and environment. The key is printed once; only its hash is kept."""
    from flexsync.tenancy import service as tenancy

    issued = _in_transaction(_settings(), lambda s: tenancy.create_api_key(s, tenant, environment, name))
    _emit(
        as_json,
        {"tenant_id": tenant, "environment_id": environment, "api_key": issued.key},
        [f"API key (shown once, store it now): {issued.key}"],
    )


@api_key_app.command("revoke")
def api_key_revoke(key_id: str) -> None:
    """Revoke an API key by its id (key_...)."""
    from flexsync.tenancy import service as tenancy

    _in_transaction(_settings(), lambda s: tenancy.revoke_api_key(s, key_id))
    console.print(f"API key {key_id} revoked")


def _bootstrap_lines(settings: Settings, result: Bootstrap) -> list[str]:
    return [
        f"tenant:       {result.tenant_id}",
        f"environment:  {result.environment_id}",
        f"API key:      {result.api_key.key}   (shown once: store it now)",
        f"Stripe webhook URL: {settings.webhook_url(result.tenant_id, result.environment_id)}",
    ]


@app.command("bootstrap")
def bootstrap_command(as_json: JsonFlag = False) -> None:
    """Create a default tenant, environment and API key; on a bootstrapped database, a new key."""
    from flexsync.db import migrate
    from flexsync.tenancy import service as tenancy

    settings = _settings()
    migrate(settings.database_url)
    result = _in_transaction(settings, tenancy.bootstrap)
    assert result is not None
    data = {
        "tenant_id": result.tenant_id,
        "environment_id": result.environment_id,
        "api_key": result.api_key.key,
        "webhook_url": settings.webhook_url(result.tenant_id, result.environment_id),
    }
    _emit(as_json, data, _bootstrap_lines(settings, result))


@app.command("rotate-keys")
def rotate_keys_command(as_json: JsonFlag = False) -> None:
    """Re-encrypt every stored Stripe secret under the newest key of FLEXSYNC_ENCRYPTION_KEYS (idempotent).

    Put the new key first and keep the old ones after it: FLEXSYNC_ENCRYPTION_KEYS="NEW,OLD". Once this has run,
    OLD can be dropped from the list.
    """
    from flexsync.connections import service as connections

    settings = _settings()
    box = _usable_secret_box(settings)
    report = _in_transaction(settings, lambda s: connections.rotate_encryption_keys(s, box))
    _emit(
        as_json,
        {"connections": report.connections, "rotated": report.rotated, "already_current": report.already_current},
        [
            f"rotated {report.rotated} secrets of {report.connections} connections under the newest encryption key "
            f"({report.already_current} already current)"
        ],
    )


@events_app.command("replay")
def events_replay(
    event_id: Annotated[str, typer.Argument(help="The event's flexsync id (whevt_...) or Stripe id (evt_...).")],
    as_json: JsonFlag = False,
) -> None:
    """Apply a stored Stripe webhook event again now and print the outcome (exit 1 if not found or failed)."""
    from flexsync.kit.errors import APIError
    from flexsync.kit.json import dumps
    from flexsync.webhooks.service import replay

    try:
        event: dict[str, Any] = json.loads(dumps(_with_database(_settings(), lambda db: replay(db, event_id))))
    except APIError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(code=1) from None
    lines = [f"{event['id']} ({event['stripe_event_id']}, {event['type']}): {event['status']}"]
    lines += [f"{label}: {event[key]}" for key, label in _EVENT_DETAILS if event[key]]
    _emit(as_json, event, lines)
    if event["status"] in ("failed", "dead"):
        raise typer.Exit(code=1)


_EVENT_DETAILS = (("customer_id", "customer"), ("note", "note"), ("last_error", "error"))


@connections_app.command("sync-endpoint")
def connections_sync_endpoint(
    connection_id: Annotated[str, typer.Argument(help="The connection's id (conn_...).")],
    as_json: JsonFlag = False,
) -> None:
    """Create, adopt or move the connection's managed Stripe webhook endpoint to the current webhook URL
    (FLEXSYNC_PUBLIC_URL): the new endpoint first, both signing secrets verifying, then the old one deleted."""
    from flexsync.connections.managed_endpoint import sync_endpoint
    from flexsync.kit.errors import APIError
    from flexsync.logs import configure_logging

    settings = _settings()
    # Warnings only (a replaced endpoint Stripe would not delete yet), on stderr: stdout is the answer.
    configure_logging("warning", settings.log_format)
    try:
        endpoint = _with_database(settings, lambda db: sync_endpoint(db, connection_id))
    except APIError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(code=1) from None
    assert endpoint is not None
    _emit(
        as_json,
        endpoint,
        [f"webhook endpoint {endpoint['id']} ({endpoint['status']}): {endpoint['url']}"],
    )


@events_app.command("prune")
def events_prune(
    older_than_days: Annotated[
        int | None,
        typer.Option(
            "--older-than-days",
            help="Days to keep; default FLEXSYNC_WEBHOOK_EVENT_RETENTION_DAYS. At least 7.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Delete stored webhook events received before then that were applied or ignored, as workers do every hour.

    Queued, failed and dead events stay, and so do customer.deleted events (they keep deleted Stripe customers
    from coming back).
    """
    from flexsync.models import utcnow
    from flexsync.webhooks.service import prune

    settings = _settings()
    days = settings.webhook_event_retention_days if older_than_days is None else older_than_days
    if older_than_days is None and days == 0:
        err_console.print(
            "[red]error:[/red] FLEXSYNC_WEBHOOK_EVENT_RETENTION_DAYS is 0 (keep every event): give --older-than-days "
            "to prune anyway"
        )
        raise typer.Exit(code=1)
    if days < MIN_WEBHOOK_EVENT_RETENTION_DAYS:
        err_console.print(
            f"[red]error:[/red] --older-than-days must be at least {MIN_WEBHOOK_EVENT_RETENTION_DAYS}: "
            f"{RETENTION_REASON}"
        )
        raise typer.Exit(code=1)

    pruned = _with_database(settings, lambda db: prune(db, days, utcnow()))
    before = pruned.received_before.isoformat()
    _emit(
        as_json,
        {"deleted": pruned.deleted, "received_before": before},
        [f"deleted {pruned.deleted} webhook events received before {before} (applied or ignored)"],
    )


CATCH_UP_HELP = (
    "List the connection's customer events from Stripe's Events API and apply those no webhook delivered.\n\n"
    "Reads the events created since the connection's catch-up cursor (less a short overlap), or since --since, "
    "stores the ones not stored yet and applies them as a webhook delivery would (each once); prints how many were "
    "listed, stored, duplicates (stored already) and applied. Exits 0 when it finished, 1 if not: the next "
    "catch-up resumes where it stopped. Workers run one every FLEXSYNC_STRIPE_CATCHUP_INTERVAL_SECONDS anyway."
)


def _moment(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter("must be an ISO 8601 time, e.g. 2026-12-01T09:30:00Z") from None
    moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    if moment > datetime.now(UTC):
        raise typer.BadParameter("must not be in the future")
    return moment


@events_app.command("catch-up", help=CATCH_UP_HELP)
def events_catch_up(
    connection: Annotated[str, typer.Option("--connection", help="The Stripe connection's id (conn_...).")],
    since: Annotated[
        str | None,
        typer.Option("--since", help="ISO 8601 time (UTC when no offset): list from then instead of the cursor."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object for scripts.")] = False,
) -> None:
    from flexsync.logs import configure_logging
    from flexsync.reconcile.service import start_for_catch_up_gap
    from flexsync.webhooks.catch_up_terminal import catch_up_in_terminal

    start = _moment(since) if since is not None else None
    settings = _settings()
    configure_logging("error", settings.log_format)
    _usable_secret_box(settings)
    code = catch_up_in_terminal(
        settings,
        connection,
        since=start,
        on_gap=start_for_catch_up_gap,
        as_json=as_json,
        out=console,
        err=err_console,
    )
    raise typer.Exit(code)


RECONCILE_HELP = (
    "Reconcile a connection's Stripe customers with flexsync's customers, in the foreground.\n\n"
    "Every Stripe customer is linked to the customer it matches (Stripe id, metadata.flexprice_customer_id, email "
    "with email_matching) or imported; unlinked customers are queued for creation in Stripe; the newer side's data "
    "wins. Conflicts are reported, never guessed at. Prints the report; exits 0 when the run finished, 1 if not.\n\n"
    "Resuming: the run saves its place after every page of 100 customers. If it stops (the process is killed, "
    "Stripe keeps failing), the same command again, with the same --direction and --dry-run, resumes it where it "
    "stopped instead of starting over: at once after a failure, and once its lease (FLEXSYNC_JOB_LEASE_SECONDS) "
    "has run out after a killed process. A dry run starts over. --restart starts a new run instead."
)


@app.command("reconcile", help=RECONCILE_HELP)
def reconcile_command(
    connection: Annotated[str, typer.Option("--connection", help="The Stripe connection's id (conn_...).")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Change nothing: report what a real run would do.")
    ] = False,
    direction: Annotated[
        Literal["both", "from-stripe", "to-stripe"],
        typer.Option(
            "--direction",
            help="from-stripe: link, import, take Stripe's newer data; to-stripe: link, push unlinked customers "
            "and flexsync's newer data; both.",
        ),
    ] = "both",
    restart: Annotated[
        bool, typer.Option("--restart", help="Start over instead of resuming the connection's unfinished run.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object for scripts.")] = False,
) -> None:
    from flexsync.logs import configure_logging
    from flexsync.reconcile.terminal import reconcile_in_terminal

    settings = _settings()
    configure_logging("error", settings.log_format)
    _usable_secret_box(settings)
    code = reconcile_in_terminal(
        settings,
        connection,
        direction=direction,
        dry_run=dry_run,
        restart=restart,
        as_json=as_json,
        out=console,
        err=err_console,
    )
    raise typer.Exit(code)


def _settle_garbage_collector() -> None:
    """For a long-running process: what start-up built (modules, the app, its routes and models) is moved out
    of the collector's sight, and the youngest generation is collected every GC_YOUNG_THRESHOLD allocations
    instead of 700. A request makes a few hundred short-lived objects, nearly all freed by reference counting;
    at the default threshold the collector ran several times per batch of webhooks, a measurable share of the
    server's CPU (BENCHMARKS.md)."""
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default FLEXSYNC_HOST).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (default FLEXSYNC_PORT).")] = None,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="Do not run the embedded sync worker.")] = False,
    no_migrate: Annotated[bool, typer.Option("--no-migrate", help="Do not apply migrations at start.")] = False,
    processes: Annotated[
        int,
        typer.Option(
            "--processes",
            min=1,
            max=MAX_PROCESSES,
            help="Server processes sharing the port, each with its own event loop (PostgreSQL only).",
        ),
    ] = 1,
) -> None:
    """Serve the API and dashboard (with an embedded worker unless --no-worker)."""
    import uvicorn

    from flexsync.db import is_sqlite_url, migrate
    from flexsync.logs import configure_logging
    from flexsync.tenancy import service as tenancy

    settings = _settings()
    settings.host = host or settings.host
    settings.port = port or settings.port
    configure_logging(settings.log_level, settings.log_format)
    if processes > 1 and is_sqlite_url(settings.database_url):
        err_console.print(
            "[red]error:[/red] --processes above 1 needs PostgreSQL: a SQLite database is served by one process "
            "(set FLEXSYNC_DATABASE_URL to a postgresql+asyncpg:// URL)",
            highlight=False,
        )
        raise typer.Exit(code=1)
    _usable_secret_box(settings)
    _usable_tls_files(settings)

    def prepare_database() -> Bootstrap | None:
        if no_migrate:
            _refuse_unmigrated(settings)
        else:
            migrate(settings.database_url)
        return _in_transaction(settings, lambda s: tenancy.bootstrap(s, new_key_when_present=False))

    first = _once_database_answers(settings, prepare_database)
    if first is not None:
        console.print("[bold]First start: created a default tenant, environment and API key[/bold]")
        for line in _bootstrap_lines(settings, first):
            console.print(line, highlight=False, soft_wrap=True)
    settings.run_worker = not no_worker
    served: Any
    metrics_dir = None
    if processes > 1:
        from flexsync.metrics import MULTIPROCESS_DIR_ENV

        # uvicorn binds the port once and starts (and restarts, if one dies) the processes, each of which builds
        # its app from the environment: the same settings as here, plus --no-worker, and where to keep the
        # counts that /metrics adds up.
        os.environ["FLEXSYNC_RUN_WORKER"] = "true" if settings.run_worker else "false"
        metrics_dir = tempfile.mkdtemp(prefix="flexsync-metrics-")
        os.environ[MULTIPROCESS_DIR_ENV] = metrics_dir
        served = f"{__name__}:{serving_app.__name__}"
    else:
        served = serving_app(settings)
    try:
        uvicorn.run(
            served,
            factory=processes > 1,
            workers=processes,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            access_log=False,
            timeout_keep_alive=settings.http_keep_alive_seconds,
            ssl_certfile=settings.tls_cert_file,
            ssl_keyfile=settings.tls_key_file,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _usable_tls_files(settings: Settings) -> None:
    """With HTTPS configured, the certificate and key must load together; else one line says why, and exit 1."""
    if not settings.serves_https:
        return
    import ssl

    files = {"FLEXSYNC_TLS_CERT_FILE": str(settings.tls_cert_file), "FLEXSYNC_TLS_KEY_FILE": str(settings.tls_key_file)}
    problem = None
    for variable, path in files.items():
        try:
            Path(path).read_bytes()
        except OSError as exc:
            problem = f"{variable}: {exc.strerror or type(exc).__name__} ({path})"
            break
    if problem is None:
        try:
            # An encrypted key would make OpenSSL ask for its password on the terminal: answering none refuses it.
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                files["FLEXSYNC_TLS_CERT_FILE"], files["FLEXSYNC_TLS_KEY_FILE"], password=lambda: b""
            )
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                problem = "the private key in FLEXSYNC_TLS_KEY_FILE does not belong to the certificate"
            else:
                problem = (
                    "FLEXSYNC_TLS_CERT_FILE must hold a PEM certificate (or chain) and FLEXSYNC_TLS_KEY_FILE its "
                    f"unencrypted PEM private key ({exc.reason or exc})"
                )
    if problem is not None:
        err_console.print(f"[red]error:[/red] cannot serve HTTPS: {problem}", highlight=False)
        raise typer.Exit(code=1)


def serving_app(settings: Settings | None = None) -> Any:
    """The app one server process serves (`serve --processes N` has uvicorn build one in each process)."""
    from flexsync.api import create_app
    from flexsync.logs import configure_logging

    if settings is None:
        settings = _settings()
        configure_logging(settings.log_level, settings.log_format)
    application = create_app(settings)
    _settle_garbage_collector()
    return application


@app.command("worker")
def worker_command(
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            min=1,
            max=MAX_WORKER_CONCURRENCY,
            help="Jobs run at once (default FLEXSYNC_WORKER_CONCURRENCY).",
        ),
    ] = None,
) -> None:
    """Run the outbound sync worker only (run many of them against PostgreSQL; one on SQLite)."""
    from flexsync.jobs.worker import run_worker
    from flexsync.kit import runtime
    from flexsync.logs import configure_logging
    from flexsync.wiring import job_registry

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    box = _usable_secret_box(settings)
    _once_database_answers(settings, lambda: _refuse_unmigrated(settings))
    _settle_garbage_collector()
    runtime.run(run_worker(settings, job_registry(), concurrency or settings.worker_concurrency, box))


def _usable_secret_box(settings: Settings) -> SecretBox:
    """The process's secret box; a key that cannot be used ends the command with one line saying why."""
    from flexsync.crypto import EncryptionKeyError, secret_box

    try:
        return secret_box(settings)
    except EncryptionKeyError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None


def _once_database_answers(settings: Settings, start: Callable[[], T]) -> T:
    """Run a long-running command's first database work; while PostgreSQL cannot be reached (it is starting
    beside us, restarting or failing over), try again with growing pauses, for FLEXSYNC_DATABASE_WAIT_SECONDS.
    Any other error, or the last one, goes to the caller."""
    import structlog

    from flexsync.db import is_sqlite_url, is_unavailable
    from flexsync.logs import describe_error

    log = structlog.get_logger(__name__)
    deadline = time.monotonic() + settings.database_wait_seconds
    pause = 0.25
    while True:
        try:
            return start()
        except Exception as exc:
            if is_sqlite_url(settings.database_url) or not is_unavailable(exc) or time.monotonic() >= deadline:
                raise
            log.warning(
                "the database cannot be reached yet; trying again", error=describe_error(exc), retry_in_seconds=pause
            )
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 5.0)


def _refuse_unmigrated(settings: Settings) -> None:
    """A long-running process on a database it cannot use would only log the same error forever."""
    from flexsync.db import unmigrated_schema

    problem = unmigrated_schema(settings.database_url)
    if problem is not None:
        err_console.print(f"[red]error:[/red] {problem}", highlight=False)
        raise typer.Exit(code=1)


def _database_problem(exc: Exception) -> str:
    from flexsync.logs import redact

    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc)
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        return "the database has no flexsync tables yet: run `flexsync migrate` first"
    return f"database error: {redact(text.splitlines()[0] if text else type(exc).__name__)}"


def _settings_problem(exc: Any) -> str:
    """Which FLEXSYNC_* variables are wrong and why; never their values (one may be a key)."""
    problems = [
        # An error of several variables together has no location: its message names them.
        (f"FLEXSYNC_{'_'.join(str(part) for part in error['loc']).upper()}: " if error["loc"] else "")
        + error["msg"].removeprefix("Value error, ")
        for error in exc.errors()
    ]
    return "invalid configuration: " + "; ".join(problems)


def _failure(exc: Exception) -> str | None:
    """What a command's failure means to the person who ran it, for the failures that have a plain cause (the
    settings, the database); None for any other. The types are imported here: a command that raised one of
    them has imported them already."""
    from pydantic import ValidationError
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, ValidationError):
        return _settings_problem(exc) if exc.title == "Settings" else None
    if isinstance(exc, DBAPIError):
        return _database_problem(exc)
    if isinstance(exc, OSError) or type(exc).__module__.startswith("asyncpg"):
        import asyncpg  # type: ignore[import-untyped]

        from flexsync.logs import redact

        if isinstance(exc, (OSError, asyncpg.PostgresError)):
            return f"cannot reach the database: {redact(str(exc))}"
    return None


def main(args: list[str] | None = None) -> None:
    """The `flexsync` command; `args` instead of the process's own arguments (the tests run it in-process)."""
    try:
        app(args)
    except Exception as exc:
        problem = _failure(exc)
        if problem is None:
            raise
        err_console.print(f"[red]error:[/red] {problem}", highlight=False)
        raise SystemExit(1) from None
