"""`flexsync events catch-up` in a terminal: a progress bar while the events are listed, then the report."""

from __future__ import annotations

from datetime import datetime

from rich.console import Console
from rich.progress import Progress as ProgressBar
from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from flexsync.config import Settings
from flexsync.context import open_context
from flexsync.kit import runtime
from flexsync.kit.errors import APIError
from flexsync.kit.json import dumps
from flexsync.stripe.calls import StripeCaller
from flexsync.webhooks.catch_up import OnGap, Progress, Report, new_holder, run_catch_up

EXIT_INTERRUPTED = 130
# A connection or two for the run's transactions, one for its lease and one for Stripe's rate limit.
MAX_CONNECTIONS = 4


async def catch_up_in_foreground(
    settings: Settings,
    connection_id: str,
    since: datetime | None,
    *,
    on_gap: OnGap | None,
    on_progress: Progress | None = None,
) -> Report:
    db = open_context(settings, max_connections=min(settings.database_max_connections, MAX_CONNECTIONS))
    try:
        async with StripeCaller(db.settings, db.sessions) as caller:
            return await run_catch_up(
                db, caller, connection_id, new_holder("cli"), since=since, on_progress=on_progress, on_gap=on_gap
            )
    finally:
        await db.engine.dispose()


def _summary(report: Report) -> str:
    return f"{report.stored:,} stored  {report.duplicates:,} duplicates  {report.applied:,} applied"


def catch_up_in_terminal(
    settings: Settings,
    connection_id: str,
    *,
    since: datetime | None,
    on_gap: OnGap | None,
    as_json: bool,
    out: Console,
    err: Console,
) -> int:
    """Run to the end and print the report; the exit status: 0 when the run finished."""
    progress = ProgressBar(
        SpinnerColumn(),
        TextColumn("[bold]listing Stripe's customer events"),
        TextColumn("{task.completed:,.0f} listed"),
        TextColumn("{task.fields[summary]}"),
        TimeElapsedColumn(),
        console=err,
        disable=as_json,
    )
    task = progress.add_task("catch-up", total=None, summary="")

    def on_progress(report: Report) -> None:
        progress.update(task, completed=report.listed, summary=_summary(report))

    try:
        with progress:
            report = runtime.run(
                catch_up_in_foreground(settings, connection_id, since, on_gap=on_gap, on_progress=on_progress)
            )
    except APIError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted: the next catch-up (this command, or a worker's) resumes where it stopped")
        return EXIT_INTERRUPTED
    if as_json:
        out.print(dumps(report.to_dict()).decode(), highlight=False, soft_wrap=True)
    else:
        _print_report(report, out)
    if report.error is None:
        return 0
    err.print(
        f"[red]Catch-up stopped:[/red] {report.error}\nRun the same command again to resume where it stopped.",
        highlight=False,
    )
    return 1


def _print_report(report: Report, out: Console) -> None:
    window = f"{report.to_dict()['since']} to {report.to_dict()['until']}"
    out.print(f"[bold]Catch-up of {report.connection_id}[/bold]: customer events created {window}", highlight=False)
    table = Table()
    table.add_column("events")
    table.add_column("count", justify="right")
    for key, value in report.counts().items():
        table.add_row(key, str(value))
    out.print(table)
    if report.gap:
        reconciling = (
            f"reconciliation {report.reconciliation_id} started"
            if report.reconciliation_id
            else f"run `flexsync reconcile --connection {report.connection_id} --direction from-stripe`"
        )
        out.print(
            "[yellow]gap:[/yellow] the catch-up cursor was older than the 30 days of events Stripe keeps; changes "
            f"made in Stripe before then may be missing: {reconciling}",
            highlight=False,
        )
