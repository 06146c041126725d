"""The `flexsync` command line run inside the test process: the installed command's own entry point
(`flexsync.cli.main`) with the arguments, FLEXSYNC_* variables and working directory a shell would give it, and
its exit status, stdout and stderr as a real process would have them. A command that ends (migrate, tenant
create, reconcile, rotate-keys, events ..., a `serve` or `worker` refused at start) costs no Python start-up;
tests whose point is the process itself (a server answering, a worker killed or signalled) still start one."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import structlog

from flexsync.cli import main
from flexsync.config import get_settings


class _Forward(io.TextIOBase):
    """sys.stdout or sys.stderr while a command runs, and after: what the command prints goes to the buffer of
    the run under way. structlog keeps the stream it was configured with in every logger it has used (its
    `cache_logger_on_first_use`), so one stream object for every run keeps each run's log lines its own."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.target: io.StringIO | None = None

    @property
    def encoding(self) -> str:
        return "utf-8"

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        # Between runs (a logger a command used, now used by the test itself): the test process's own stream.
        stream = self.target if self.target is not None else getattr(sys, self.name)
        if stream is not self:
            stream.write(text)
        return len(text)


_STDOUT, _STDERR = _Forward("stdout"), _Forward("stderr")


@dataclass
class Completed:
    """What a finished `flexsync` process leaves: as subprocess.CompletedProcess has it."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    """Exactly these FLEXSYNC_* variables (any of the test process's own are hidden), restored afterwards."""
    saved = dict(os.environ)
    for name in [name for name in os.environ if name.startswith("FLEXSYNC_")]:
        del os.environ[name]
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_flexsync(args: list[str], *, env: Mapping[str, str], cwd: os.PathLike[str] | str = ".") -> Completed:
    """`flexsync ARGS` with `env`'s FLEXSYNC_* variables, in `cwd` (default: where the tests run); an exception
    that escapes the command ends it as it would end the process: its traceback on stderr and exit status 1."""
    out, err = io.StringIO(), io.StringIO()
    _STDOUT.target, _STDERR.target = out, err
    logging_before = structlog.get_config()
    get_settings.cache_clear()
    try:
        with (
            _environment({k: v for k, v in env.items() if k.startswith("FLEXSYNC_")}),
            contextlib.chdir(cwd),
            contextlib.redirect_stdout(_STDOUT),
            contextlib.redirect_stderr(_STDERR),
        ):
            try:
                main(list(args))
                code = 0
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    err.write(f"{exc.code}\n")
                    code = 1
            except Exception:
                err.write(traceback.format_exc())
                code = 1
    finally:
        _STDOUT.target = _STDERR.target = None
        get_settings.cache_clear()
        structlog.configure(**logging_before)
    return Completed(list(args), code, out.getvalue(), err.getvalue())
