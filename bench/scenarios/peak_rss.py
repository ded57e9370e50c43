"""Peak RSS (``VmHWM``) of both servers at the end of the run; the mirror has no children."""

from __future__ import annotations

from bench.config import MIRROR_NAME, Config
from bench.context import Context
from bench.procs import child_pids, kib_field, proc_status
from bench.report import Row
from bench.scenarios.base import Rows, Scenario

__all__ = ["PEAK_RSS", "PeakRss"]

PEAK_RSS = "peak_rss"
LIMIT_MIB = 100


class PeakRss(Scenario):
    """Always run, last: the memory of everything measured before (``VmHWM`` is the most the
    process ever held, the crowd of cold followers included when it ran)."""

    group = None
    phase = None

    def title(self, cfg: Config) -> str:
        return "peak RSS"

    def rows(self, cfg: Config) -> list[Row]:
        return [
            Row(
                PEAK_RSS,
                "Peak RSS of the server process over the whole run",
                "MiB",
                "lower",
                decimals=1,
                target=f"mirror ≤ {LIMIT_MIB} MiB",
            )
        ]

    def run(self, ctx: Context, rows: Rows) -> None:
        rss_row = rows[PEAK_RSS]
        for target in ctx.targets:
            status = proc_status(target.pid)
            hwm = kib_field(status, "VmHWM")
            if not target.alive() or hwm is None:
                rss_row.errors.append(f"{target.name}: process not running, no VmHWM")
                continue
            rss_row.values[target.name] = hwm
            rss_row.details[target.name] = {
                "VmHWM_MiB": hwm,
                "VmRSS_MiB": kib_field(status, "VmRSS"),
                "threads": int(status.get("Threads", "0")),
            }
        children = sorted(ctx.forks | set(child_pids(ctx.mirror.pid)))
        rss_row.details["mirror_child_processes"] = children
        rss_row.details["after_phase"] = ctx.phases
        if children:
            rss_row.errors.append(
                f"{MIRROR_NAME}: has child processes {children}; VmHWM covers only the parent"
            )
        for target in ctx.targets:
            ctx.console.print(f"  {target.name}: {rss_row.details.get(target.name)}")

    def evaluate(self, rows: Rows) -> None:
        row = rows[PEAK_RSS]
        mirror_rss = row.value(MIRROR_NAME)
        row.passed = (
            mirror_rss is not None and mirror_rss <= LIMIT_MIB and not row.failed_for(MIRROR_NAME)
        )
