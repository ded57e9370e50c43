"""Rows of the report, their pass/fail against a target, the table and the JSON file."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from bench.config import MIRROR_NAME, REFERENCE_NAMES, REGISTRY_NAME, Config

__all__ = [
    "Row",
    "copy_errors",
    "copy_figures",
    "make_console",
    "mirror_at_most",
    "ratio_at_least",
    "ratio_at_most",
    "ratio_target",
    "render",
    "write_results",
]


@dataclass
class Row:
    key: str
    label: str
    unit: str
    better: Literal["higher", "lower"]
    values: dict[str, float | None] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    target: str | None = None
    passed: bool | None = None
    decimals: int = 0
    skipped: bool = False
    flags: set[str] = field(default_factory=set)  # names whose figure is suspect (no error)
    baseline: str | None = REGISTRY_NAME  # the ratio is mirror / this one (None: no ratio)

    def value(self, name: str) -> float | None:
        return self.values.get(name)

    def ratio_to(self, name: str) -> float | None:
        mirror, other = self.value(MIRROR_NAME), self.value(name)
        if mirror is None or other is None or other == 0:
            return None
        return mirror / other

    @property
    def ratio(self) -> float | None:
        return None if self.baseline is None else self.ratio_to(self.baseline)

    def failed_for(self, name: str) -> bool:
        """Whether an error of the proxy ``name`` was recorded in this row."""
        return any(e.startswith(f"{name}:") for e in self.errors)

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            "better": self.better,
            "mirror": self.value(MIRROR_NAME),
            "registry2": self.value(REGISTRY_NAME),
            **{name: self.value(name) for name in REFERENCE_NAMES if name in self.values},
            "ratio_mirror_over_registry2": self.ratio_to(REGISTRY_NAME),
            "baseline": self.baseline,
            "ratio": self.ratio,
            "target": self.target,
            "passed": self.passed,
            "skipped": self.skipped,
            "errors": self.errors,
            "details": self.details,
        }


def ratio_target(limit: float, op: Literal["≥", "≤"] = "≥", baseline: str = REGISTRY_NAME) -> str:
    """The target text of a row whose ratio mirror / ``baseline`` must be ``op`` ``limit``."""
    if baseline == REGISTRY_NAME:
        return f"ratio {op} {limit:g}x"
    return f"mirror {op} {limit:g}x {baseline}"


def _judge(row: Row, ok: bool | None) -> None:
    """PASS/FAIL from ``ok``; FAIL whenever the mirror or the baseline had an error."""
    names = [MIRROR_NAME] if row.baseline is None else [MIRROR_NAME, row.baseline]
    if any(row.failed_for(name) for name in names) or (row.errors and ok is None):
        row.passed = False
    else:
        row.passed = ok


def ratio_at_least(row: Row, limit: float) -> None:
    ratio = row.ratio
    _judge(row, None if ratio is None else ratio >= limit)


def ratio_at_most(row: Row, limit: float) -> None:
    ratio = row.ratio
    _judge(row, None if ratio is None else ratio <= limit)


def mirror_at_most(row: Row, limit: float) -> None:
    """PASS if the mirror's own figure is at most ``limit``."""
    value = row.value(MIRROR_NAME)
    _judge(row, None if value is None else value <= limit)


def copy_errors(source: Row, dest: Row, names: Sequence[str]) -> None:
    """Give ``dest`` the errors and flags of ``names`` in ``source`` (a row derived from it)."""
    for name in names:
        dest.errors += [
            e for e in source.errors if e.startswith(f"{name}:") and e not in dest.errors
        ]
        if name in source.flags:
            dest.flags.add(name)


def copy_figures(source: Row, dest: Row, names: Sequence[str]) -> None:
    """Give ``dest`` the figures, errors and flags of ``names`` in ``source``."""
    for name in names:
        if name in source.values:
            dest.values[name] = source.values[name]
    copy_errors(source, dest, names)


def make_console() -> Console:
    return Console(highlight=False, width=max(180, shutil.get_terminal_size((180, 40)).columns))


def render(rows: Sequence[Row], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column(MIRROR_NAME, justify="right")
    table.add_column(REGISTRY_NAME, justify="right")
    table.add_column(" / ".join(REFERENCE_NAMES), justify="right")
    table.add_column("ratio\n(mirror/r2\nor as noted)", justify="right")
    table.add_column("better", justify="center")
    table.add_column("target")
    table.add_column("result")

    def cell(row: Row, name: str) -> str | None:
        value = row.value(name)
        failed = name in row.flags or row.failed_for(name)
        if value is None:
            return "[red]error[/]" if failed else None
        return f"{value:,.{row.decimals}f}" + (" [red](!)[/]" if failed else "")

    for row in rows:
        cells = [cell(row, name) or "-" for name in (MIRROR_NAME, REGISTRY_NAME)]
        references = [
            f"{text} [dim]{name}[/]"
            for name in REFERENCE_NAMES
            if (text := cell(row, name)) is not None
        ]
        cells.append(", ".join(references) or "-")
        ratio = row.ratio
        ratio_text = "-" if ratio is None else f"{ratio:.2f}x"
        if ratio is not None and row.baseline != REGISTRY_NAME:
            ratio_text += f" [dim]vs {row.baseline}[/]"
        if row.skipped:
            result = "[dim]skipped[/]"
        elif row.passed is None:
            result = "[red]ERROR[/]" if row.errors else ""
        else:
            result = "[green]PASS[/]" if row.passed else "[red]FAIL[/]"
        table.add_row(
            f"{row.label} [dim]({row.unit})[/]",
            *cells,
            ratio_text,
            "↑" if row.better == "higher" else "↓",
            row.target or "",
            result,
        )
    return table


def write_results(
    path: Path,
    *,
    quick: bool,
    cfg: Config,
    environment: dict[str, Any],
    elapsed: float,
    rows: Sequence[Row],
) -> None:
    result = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "config": dataclasses.asdict(cfg),
        "environment": environment,
        "run_seconds": round(elapsed, 1),
        "rows": [r.as_dict() for r in rows],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
