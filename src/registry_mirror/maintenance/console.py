"""What every operator command prints with: the consoles (tables on standard output,
one-line errors on standard error), sizes and times as a person reads them, and the
event loop a command runs its coroutine on."""

from __future__ import annotations

import datetime
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop
from rich.console import Console

__all__ = ["err", "human_size", "local_time", "out", "run_async"]

T = TypeVar("T")

# Piped output is read by scripts and people alike: never wrap names in tables there.
out = Console() if sys.stdout.isatty() else Console(width=240)
err = Console(stderr=True, soft_wrap=True)  # an error is one line, however long


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(coro)


def local_time(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)
