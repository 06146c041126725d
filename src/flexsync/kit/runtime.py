"""Running a long-lived process's coroutine on the fastest event loop at hand."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on uvloop where it is installed (a dependency on Linux and macOS; `serve` runs on it through
    uvicorn), else on asyncio's own loop. For the worker, whose every job is a few database round trips and a
    Stripe request, the socket work is a good part of its CPU, and uvloop's is the cheaper."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
