"""The command line: parse the arguments, run the selected scenarios, print and save the report.

Run from the project root: ``python -m bench`` (or ``python -m bench.run``); ``--help``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from bench.config import DEFAULT_MIRROR_BIN, DEFAULT_OUTPUT, MIB, MIRROR_NAME, Config
from bench.context import open_context
from bench.environment import describe, make_scratch, preflight
from bench.procs import Runner, clean_env
from bench.report import Row, make_console, render, write_results
from bench.scenarios import GROUPS, SCENARIOS, Scenario

__all__ = ["main", "parse_args"]


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Config]:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark registry-mirror against registry:2 (proxy mode) on loopback.",
    )
    p.add_argument("--quick", action="store_true", help="small sizes: a ~1.5 minute smoke run")
    p.add_argument("--blob-mib", type=int, help="size of the big layer (default 256; quick 32)")
    p.add_argument("--blob-gets", type=int, default=8, help="cache-hit GETs of the big layer")
    p.add_argument("--blob-concurrency", type=int, default=4, help="concurrent cache-hit GETs")
    p.add_argument(
        "--blob-rounds", type=int, default=3, help="rounds of --blob-gets GETs; median MB/s"
    )
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 10; quick 3)")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--wrk-connections", type=int, default=32)
    p.add_argument("--pull-layers", type=int, default=5, help="layers of the pull-time image")
    p.add_argument("--pull-mib", type=int, help="size of the pull-time image (default 40; quick 8)")
    p.add_argument("--warm-pulls", type=int, help="warm pulls, median taken (default 5; quick 2)")
    p.add_argument("--herd-clients", type=int, default=16, help="concurrent cold clients")
    p.add_argument("--herd-layers", type=int, default=3)
    p.add_argument("--herd-layer-mib", type=int, help="layer size (default 20; quick 4)")
    p.add_argument(
        "--cold-mib",
        type=int,
        help="size of the fresh blobs of the cold GET, join and range rows (default 200; quick 32)",
    )
    p.add_argument("--cold-samples", type=int, default=3, help="cold GETs per proxy, median taken")
    p.add_argument("--join-clients", type=int, default=16, help="clients joining one cold fill")
    p.add_argument(
        "--crowd-clients", type=int, default=100, help="concurrent cold followers (peak RSS)"
    )
    p.add_argument("--crowd-mib", type=int, help="their blob's size (default 64; quick 16)")
    p.add_argument("--media", choices=("oci", "docker"), default="oci")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    p.add_argument("--mirror-bin", type=Path, default=DEFAULT_MIRROR_BIN)
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    p.add_argument(
        "--only",
        type=lambda v: set(v.split(",")),
        default=set(GROUPS),
        metavar="GROUPS",
        help=f"comma-separated subset of {','.join(GROUPS)} (peak RSS is always reported)",
    )
    args = p.parse_args(argv)
    if not args.only <= set(GROUPS):
        p.error(f"--only: unknown groups {sorted(args.only - set(GROUPS))}")

    def pick(value: int | None, full: int, quick: int) -> int:
        return value if value is not None else (quick if args.quick else full)

    cfg = Config(
        blob_mib=pick(args.blob_mib, 256, 32),
        blob_gets=args.blob_gets,
        blob_rounds=args.blob_rounds,
        blob_concurrency=args.blob_concurrency,
        duration=pick(args.duration, 10, 3),
        warmup=1 if args.quick else 2,
        wrk_threads=args.wrk_threads,
        wrk_connections=args.wrk_connections,
        pull_layers=args.pull_layers,
        pull_mib=pick(args.pull_mib, 40, 8),
        warm_pulls=pick(args.warm_pulls, 5, 2),
        herd_clients=args.herd_clients,
        herd_layers=args.herd_layers,
        herd_layer_mib=pick(args.herd_layer_mib, 20, 4),
        cold_mib=pick(args.cold_mib, 200, 32),
        cold_samples=args.cold_samples,
        join_clients=args.join_clients,
        crowd_clients=args.crowd_clients,
        crowd_mib=pick(args.crowd_mib, 64, 16),
        media=args.media,
    )
    for name in (
        "blob_mib",
        "blob_gets",
        "blob_rounds",
        "duration",
        "pull_mib",
        "herd_clients",
        "cold_mib",
        "cold_samples",
        "join_clients",
        "crowd_clients",
        "crowd_mib",
    ):
        if getattr(cfg, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args, cfg


def selected(scenario: Scenario, only: set[str]) -> bool:
    """Whether ``--only`` selects the scenario (those without a group always run)."""
    return scenario.group is None or scenario.group in only


def bench(
    args: argparse.Namespace,
    cfg: Config,
    tmp: Path,
    runner: Runner,
    console: Console,
    *,
    scratch: Path,
) -> tuple[list[Row], dict[str, Any], list[str]]:
    """Run the scenarios selected by ``--only`` (and the ones always run).

    Returns every scenario's rows (the others marked skipped) in report order, what was
    recorded about the machine, and the notes to print below the table.
    """
    wrk = preflight(args.mirror_bin, console)
    env_info = describe(wrk, console)
    env_info["scratch"] = str(scratch)

    with contextlib.ExitStack() as stack:
        ctx = open_context(
            stack,
            cfg=cfg,
            console=console,
            tmp=tmp,
            runner=runner,
            wrk=wrk,
            mirror_bin=args.mirror_bin,
            scratch=scratch,
        )
        plan = [
            (s, {row.key: row for row in s.rows(cfg)}, selected(s, args.only)) for s in SCENARIOS
        ]
        seconds: dict[str, float] = {}  # each scenario's run time
        env_info["scenario_seconds"] = seconds
        for number, (scenario, rows, chosen) in enumerate(plan, 1):
            for row in rows.values():
                row.skipped = not chosen
            if not chosen:
                continue
            console.rule(f"{number}. {scenario.title(cfg)}")
            if scenario.needs_wrk and ctx.wrk is None:
                for row in rows.values():
                    row.errors.append("wrk is not installed")
                continue
            started = time.monotonic()
            scenario.run(ctx, rows)
            if scenario.phase is not None:
                ctx.checkpoint(scenario.phase)
            seconds[scenario.title(cfg)] = round(time.monotonic() - started, 1)

        env_info["loadavg_after"] = os.getloadavg()
        env_info["settle_timeouts"] = ctx.unsettled
        for scenario, rows, chosen in plan:
            if chosen:
                scenario.evaluate(rows)
        mirror_stderr = ctx.mirror.stderr_tail(200)
        env_info["mirror_stderr_tail"] = mirror_stderr.splitlines()[-50:]
        if mirror_stderr.strip():
            n = len(ctx.mirror.log().splitlines())
            console.rule(f"{MIRROR_NAME} stderr ({n} lines at level warning; last 20)")
            console.print("\n".join(mirror_stderr.splitlines()[-20:]), markup=False)
    notes = [line for scenario, rows, _ in plan for line in scenario.notes(rows)]
    return [row for _, rows, _ in plan for row in rows.values()], env_info, notes


def main(argv: Sequence[str] | None = None) -> int:
    args, cfg = parse_args(argv)
    console = make_console()

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignored
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="registry-mirror-bench-"))
    # The most that clients hold downloaded at once: the joining clients' files.
    scratch = make_scratch(tmp, (cfg.join_clients + 2) * cfg.cold_mib * MIB)
    runner = Runner(clean_env(tmp))  # clients write their temp files into our temp dir
    rows: list[Row] = []
    env_info: dict[str, Any] = {}
    notes: list[str] = []
    try:
        console.print(f"temp dir {tmp}, client downloads in {scratch}; config {cfg}")
        rows, env_info, notes = bench(args, cfg, tmp, runner, console, scratch=scratch)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        return 130
    except Exception as exc:
        console.print(f"[red]benchmark failed: {exc}[/]")
        traceback.print_exc()
        return 1
    finally:
        runner.kill_all()
        if args.keep_tmp:
            console.print(f"kept {tmp} and {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - started

    title = (
        f"registry-mirror vs registry:2 (distribution 2.8) proxy, loopback, "
        f"{os.cpu_count()} CPUs{' — QUICK' if args.quick else ''}"
    )
    console.print()
    console.print(render(rows, title))
    for line in notes:
        console.print(line)
    console.print(f"total run time {elapsed:.0f}s")

    write_results(
        args.output, quick=args.quick, cfg=cfg, environment=env_info, elapsed=elapsed, rows=rows
    )
    console.print(f"results written to {args.output}")
    if any(r.errors for r in rows) or any(r.passed is False for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
