"""Command-line start-up (issue 18): how long `import flexsync.cli`, `flexsync --help` and a short database
command (`flexsync tenant create NAME --json` on a migrated SQLite file) take.

Each run, alternating which goes first, measures for this checkout and for a baseline source tree (a
`git archive` of an earlier commit's `src/`, put first on PYTHONPATH so it is the one imported):

- `python -X importtime -c 'import flexsync.cli'`: the cumulative microseconds of `flexsync.cli`;
- `flexsync --help` (the installed console script, its output thrown away): wall seconds, and CPU seconds
  (user + system, from the child's rusage: on a shared machine the steadier of the two);
- `flexsync tenant create NAME --json` against a SQLite file migrated once before the runs (FLEXSYNC_DATABASE_URL,
  FLEXSYNC_ENCRYPTION_KEYS set): wall seconds, the database work included.

Prints one line per run and the medians.

Usage:

    mkdir -p /tmp/base && git archive a03f310 src | tar -x -C /tmp/base
    python bench/cli_startup.py --baseline-src /tmp/base/src --runs 7
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONSOLE_SCRIPT = Path(sys.executable).with_name("flexsync")


def _env(src: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXSYNC_")}
    env.pop("PYTHONPATH", None)
    if src is not None:
        env["PYTHONPATH"] = src
    env.update(extra)
    return env


def import_seconds(src: str | None) -> float:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import flexsync.cli"],
        env=_env(src),
        capture_output=True,
        text=True,
        check=True,
    )
    for line in done.stderr.splitlines():
        parts = [part.strip() for part in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[2] == "flexsync.cli":
            return int(parts[1]) / 1e6
    raise RuntimeError("flexsync.cli not in the import times")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def help_seconds(src: str | None) -> tuple[float, float]:
    """Wall and CPU seconds of one `flexsync --help`."""
    cpu, started = _children_cpu(), time.perf_counter()
    subprocess.run([str(CONSOLE_SCRIPT), "--help"], env=_env(src), capture_output=True, check=True)
    return time.perf_counter() - started, _children_cpu() - cpu


def command_seconds(src: str | None, database: dict[str, str], name: str) -> float:
    """Wall seconds of one `flexsync tenant create NAME --json`."""
    started = time.perf_counter()
    subprocess.run(
        [str(CONSOLE_SCRIPT), "tenant", "create", name, "--json"],
        env=_env(src, **database),
        capture_output=True,
        check=True,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-src", required=True, help="the baseline's src/ directory")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    trees = {"baseline": args.baseline_src, "this": None}
    results: dict[str, dict[str, list[float]]] = {
        name: {"import": [], "help": [], "cpu": [], "command": []} for name in trees
    }
    folder = tempfile.mkdtemp(prefix="flexsync-cli-startup-")
    database = {
        "FLEXSYNC_DATABASE_URL": f"sqlite+aiosqlite:///{folder}/flexsync.db",
        "FLEXSYNC_ENCRYPTION_KEYS": "3n5kpH0c8Mq3Q1pG9ZtZ6y0l0h2C8y0m4mYzq1i6Qk8=",
    }
    subprocess.run([str(CONSOLE_SCRIPT), "migrate"], env=_env(None, **database), capture_output=True, check=True)
    for run in range(args.runs):
        order = list(trees) if run % 2 == 0 else list(reversed(trees))
        for name in order:
            results[name]["import"].append(import_seconds(trees[name]))
            wall, cpu = help_seconds(trees[name])
            results[name]["help"].append(wall)
            results[name]["cpu"].append(cpu)
            results[name]["command"].append(command_seconds(trees[name], database, f"{name}-{run}"))
            print(
                f"run {run + 1} {name:8}: import flexsync.cli {results[name]['import'][-1]:.3f} s, "
                f"flexsync --help {wall:.3f} s (CPU {cpu:.3f} s), "
                f"tenant create {results[name]['command'][-1]:.3f} s",
                flush=True,
            )
    for name in trees:
        print(
            f"median {name:8}: import flexsync.cli {statistics.median(results[name]['import']):.3f} s, "
            f"flexsync --help {statistics.median(results[name]['help']):.3f} s "
            f"(CPU {statistics.median(results[name]['cpu']):.3f} s), "
            f"tenant create {statistics.median(results[name]['command']):.3f} s"
        )


if __name__ == "__main__":
    main()
