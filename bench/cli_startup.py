"""Command-line start-up (issue 18): how long `import flexsync.cli` and `flexsync --help` take.

Each run, alternating which goes first, measures for this checkout and for a baseline source tree (a
`git archive` of an earlier commit's `src/`, put first on PYTHONPATH so it is the one imported):

- `python -X importtime -c 'import flexsync.cli'`: the cumulative microseconds of `flexsync.cli`;
- `flexsync --help` (the installed console script, its output thrown away): wall seconds, and CPU seconds
  (user + system, from the child's rusage: on a shared machine the steadier of the two).

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
import time
from pathlib import Path

CONSOLE_SCRIPT = Path(sys.executable).with_name("flexsync")


def _env(src: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if src is not None:
        env["PYTHONPATH"] = src
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-src", required=True, help="the baseline's src/ directory")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    trees = {"baseline": args.baseline_src, "this": None}
    results: dict[str, dict[str, list[float]]] = {name: {"import": [], "help": [], "cpu": []} for name in trees}
    for run in range(args.runs):
        order = list(trees) if run % 2 == 0 else list(reversed(trees))
        for name in order:
            results[name]["import"].append(import_seconds(trees[name]))
            wall, cpu = help_seconds(trees[name])
            results[name]["help"].append(wall)
            results[name]["cpu"].append(cpu)
            print(
                f"run {run + 1} {name:8}: import flexsync.cli {results[name]['import'][-1]:.3f} s, "
                f"flexsync --help {wall:.3f} s (CPU {cpu:.3f} s)",
                flush=True,
            )
    for name in trees:
        print(
            f"median {name:8}: import flexsync.cli {statistics.median(results[name]['import']):.3f} s, "
            f"flexsync --help {statistics.median(results[name]['help']):.3f} s "
            f"(CPU {statistics.median(results[name]['cpu']):.3f} s)"
        )


if __name__ == "__main__":
    main()
