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

from bench.config import MIRROR_NAME, REGISTRY_NAME, Config

__all__ = [
    "Row",
    "make_console",
    "ratio_at_least",
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

    def value(self, name: str) -> float | None:
        return self.values.get(name)

    @property
    def ratio(self) -> float | None:
        mirror, reg = self.value(MIRROR_NAME), self.value(REGISTRY_NAME)
        if mirror is None or reg is None or reg == 0:
            return None
        return mirror / reg

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
            "ratio_mirror_over_registry2": self.ratio,
            "target": self.target,
            "passed": self.passed,
            "skipped": self.skipped,
            "errors": self.errors,
            "details": self.details,
        }


def ratio_target(limit: float) -> str:
    """The target text of a row that must reach ``limit`` as ratio mirror / registry:2."""
    return f"ratio ≥ {limit:g}x"


def ratio_at_least(row: Row, limit: float) -> None:
    row.passed = None if row.errors or row.ratio is None else row.ratio >= limit
    if row.errors:
        row.passed = False


def make_console() -> Console:
    return Console(highlight=False, width=max(130, shutil.get_terminal_size((130, 40)).columns))


def render(rows: Sequence[Row], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column(MIRROR_NAME, justify="right")
    table.add_column(REGISTRY_NAME, justify="right")
    table.add_column("ratio\n(mirror/r2)", justify="right")
    table.add_column("better", justify="center")
    table.add_column("target")
    table.add_column("result")

    for row in rows:
        cells: list[str] = []
        for name in (MIRROR_NAME, REGISTRY_NAME):
            value = row.value(name)
            failed = name in row.flags or row.failed_for(name)
            if value is None:
                cells.append("[red]error[/]" if failed else "-")
            else:
                cells.append(f"{value:,.{row.decimals}f}" + (" [red](!)[/]" if failed else ""))
        ratio = row.ratio
        if row.skipped:
            result = "[dim]skipped[/]"
        elif row.passed is None:
            result = "[red]ERROR[/]" if row.errors else ""
        else:
            result = "[green]PASS[/]" if row.passed else "[red]FAIL[/]"
        table.add_row(
            f"{row.label} [dim]({row.unit})[/]",
            *cells,
            "-" if ratio is None else f"{ratio:.2f}x",
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
