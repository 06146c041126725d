"""`flexsync reconcile` in a terminal: a progress bar (counts and rate) while the run goes, then its report."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from flexsync.config import Settings
from flexsync.kit import runtime
from flexsync.kit.errors import APIError
from flexsync.kit.json import dumps
from flexsync.models import Reconciliation
from flexsync.reconcile import runner, service
from flexsync.sync.reconcile import COUNT_KEYS, Direction

PHASES = {"stripe": "Stripe customers", "customers": "unlinked customers", "done": "done"}
EXIT_INTERRUPTED = 130


class RateColumn(ProgressColumn):
    """Customers per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f}/s" if speed else "-/s", style="progress.data.speed")


def _summary(run: Reconciliation) -> str:
    counts = run.counts or {}
    return "  ".join(f"{key} {counts.get(key, 0)}" for key in COUNT_KEYS)


def reconcile_in_terminal(
    settings: Settings,
    connection_id: str,
    *,
    direction: Direction,
    dry_run: bool,
    restart: bool,
    as_json: bool,
    out: Console,
    err: Console,
) -> int:
    """Run to the end and print the report; the exit status: 0 when the run succeeded."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f} processed"),
        RateColumn(),
        TextColumn("{task.fields[summary]}"),
        TimeElapsedColumn(),
        console=err,
        disable=as_json,
    )
    task = progress.add_task("starting", total=None, summary="")

    def on_start(started: service.Started) -> None:
        run = started.run
        mode = f"{run.direction}{', dry run' if run.dry_run else ''}"
        if started.resumed and run.processed:
            where = f"{PHASES[run.phase]} after {run.cursor}" if run.cursor else PHASES[run.phase]
            err.print(f"Resuming reconciliation {run.id} ({mode}) at {where}, {run.processed} processed before")
        else:
            err.print(f"Reconciliation {run.id} ({mode})")
        progress.update(task, completed=run.processed, summary=_summary(run))

    def on_progress(run: Reconciliation) -> None:
        progress.update(task, description=PHASES[run.phase], completed=run.processed, summary=_summary(run))

    try:
        with progress:
            run = runtime.run(
                runner.run_in_foreground(
                    settings,
                    connection_id,
                    direction=direction,
                    dry_run=dry_run,
                    restart=restart,
                    on_start=on_start,
                    on_progress=on_progress,
                )
            )
    except APIError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted: run the same command again to resume where it stopped")
        return EXIT_INTERRUPTED
    if as_json:
        out.print(dumps(service.run_to_dict(run)).decode(), highlight=False, soft_wrap=True)
    else:
        _print_report(run, out)
    if run.status == "succeeded":
        return 0
    err.print(
        f"[red]Reconciliation {run.id} stopped:[/red] {run.error}\n"
        f"Run the same command again to resume it where it stopped ({run.processed} processed so far).",
        highlight=False,
    )
    return 1


def _print_report(run: Reconciliation, out: Console) -> None:
    dry = " (dry run: nothing was changed)" if run.dry_run else ""
    out.print(f"[bold]Reconciliation {run.id}: {run.status}[/bold]{dry}", highlight=False)
    counts = Table()
    counts.add_column("result")
    counts.add_column("customers", justify="right")
    for key in COUNT_KEYS:
        counts.add_row(key, str((run.counts or {}).get(key, 0)))
    counts.add_row("processed", str(run.processed), style="bold")
    out.print(counts)
    if run.conflicts:
        total = (run.counts or {}).get("conflicts", len(run.conflicts))
        shown = f", the first {len(run.conflicts)} shown" if total > len(run.conflicts) else ""
        out.print(f"[bold]{total} conflicts[/bold]{shown} (nothing was guessed: resolve these by hand)")
        conflicts = Table()
        for column in ("kind", "Stripe customers", "customers", "why"):
            conflicts.add_column(column, overflow="fold")
        for conflict in run.conflicts:
            conflicts.add_row(
                conflict["kind"],
                "\n".join(conflict["stripe_customer_ids"]),
                "\n".join(conflict["customer_ids"]),
                conflict["message"],
            )
        out.print(conflicts)
