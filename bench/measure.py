"""A measurement made on both proxies in turn: the value, its details, or the error."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from bench.config import MIRROR_NAME
from bench.errors import BenchError
from bench.report import Row
from tests.support.mirror import MirrorError
from tests.support.registry import RegistryError, RegistryProcess

__all__ = [
    "MEASURE_ERRORS",
    "Measurement",
    "Target",
    "check_alive",
    "measure",
    "measure_rounds",
    "upstream_client",
    "upstream_downloads",
]


@dataclass
class Target:
    """One of the two proxies under test."""

    name: str
    host: str
    pid: int
    alive: Callable[[], bool]
    stderr_tail: Callable[[int], str]

    @property
    def url(self) -> str:
        return f"http://{self.host}"


def check_alive(target: Target) -> None:
    if not target.alive():
        raise BenchError(f"{target.name} is not running any more")


def upstream_client(target: Target, user_agent: str) -> bool:
    """Whether an upstream access-log line with this User-Agent came from ``target``."""
    return user_agent.startswith("registry-mirror") == (target.name == MIRROR_NAME)


def upstream_downloads(upstream: RegistryProcess, digest: str) -> tuple[int, int]:
    """GETs of the blob ``digest`` (any repository) that the upstream answered with content
    (200/206) since its log was last cleared, and the bytes it sent for them."""
    suffix = f"/blobs/{digest}"
    hits = [
        r
        for r in upstream.requests()
        if r.method == "GET" and r.status in (200, 206) and r.path.endswith(suffix)
    ]
    return len(hits), sum(r.size for r in hits)


MEASURE_ERRORS = (
    BenchError,
    RegistryError,
    MirrorError,
    OSError,
    subprocess.SubprocessError,
    ValueError,
)
Measurement = Callable[[Target], tuple[float, dict[str, Any]]]


def _failed(console: Console, row: Row, target: Target, exc: BaseException) -> None:
    row.values[target.name] = getattr(exc, "value", None)
    row.errors.append(f"{target.name}: {exc}")
    row.details[target.name] = {"error": str(exc), **getattr(exc, "details", {})}
    console.print(f"[red]  {row.label} / {target.name}: FAILED: {exc}[/]")
    tail = target.stderr_tail(30)
    if tail:
        console.print(f"[red]  {target.name} stderr (tail):[/]")
        console.print(tail, markup=False)


def _record(
    console: Console, row: Row, target: Target, value: float, details: dict[str, Any]
) -> None:
    row.values[target.name] = value
    row.details[target.name] = details
    console.print(f"  {row.label} / {target.name}: {value:.{row.decimals}f} {row.unit}")


def measure(console: Console, row: Row, targets: Sequence[Target], fn: Measurement) -> None:
    """Run ``fn`` for each target in order; record value/details, or the error."""
    for target in targets:
        started = time.monotonic()
        try:
            check_alive(target)
            value, details = fn(target)
            check_alive(target)
        except MEASURE_ERRORS as exc:
            _failed(console, row, target, exc)
            continue
        details["elapsed_s"] = round(time.monotonic() - started, 2)
        _record(console, row, target, value, details)


def measure_rounds(
    console: Console,
    row: Row,
    targets: Sequence[Target],
    *,
    prepare: Callable[[Target], dict[str, Any]],
    one_round: Measurement,
    rounds: int,
    finish: Callable[[Target], dict[str, Any]],
) -> None:
    """Prepare every target, then run the rounds interleaved (A B A B ...), then finish.

    Interleaving makes load that drifts over time (the machine may be shared) hit both alike.
    The value is the median of the rounds.
    """
    details: dict[str, dict[str, Any]] = {}
    values: dict[str, list[float]] = {}
    live: list[Target] = []
    for target in targets:
        try:
            check_alive(target)
            details[target.name] = {**prepare(target), "rounds": []}
        except MEASURE_ERRORS as exc:
            _failed(console, row, target, exc)
            continue
        values[target.name] = []
        live.append(target)
    for _ in range(rounds):
        for target in list(live):
            try:
                check_alive(target)
                value, info = one_round(target)
            except MEASURE_ERRORS as exc:
                _failed(console, row, target, exc)
                live.remove(target)
                continue
            values[target.name].append(value)
            details[target.name]["rounds"].append(info)
    for target in live:
        try:
            check_alive(target)
            details[target.name].update(finish(target))
        except MEASURE_ERRORS as exc:
            _failed(console, row, target, exc)
            continue
        _record(console, row, target, statistics.median(values[target.name]), details[target.name])
