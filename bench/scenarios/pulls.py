"""Cold and warm pull time with skopeo (a different image per proxy for the cold pull)."""

from __future__ import annotations

import re
from typing import Any

from bench.clients import skopeo_pull
from bench.config import Config
from bench.context import Context
from bench.measure import Target, measure, measure_rounds
from bench.report import Row
from bench.scenarios.base import Rows, Scenario

__all__ = ["COLD_PULL", "WARM_PULL", "Pulls"]

COLD_PULL, WARM_PULL = "cold_pull", "warm_pull"


class Pulls(Scenario):
    """One cold pull per proxy, then warm pulls of the same image, alternating (median)."""

    group = "pull"
    phase = "pull"

    def title(self, cfg: Config) -> str:
        return "cold and warm pull time"

    def rows(self, cfg: Config) -> list[Row]:
        return [
            Row(
                COLD_PULL,
                f"Cold pull, {cfg.pull_layers} layers / {cfg.pull_mib} MiB (skopeo)",
                "s",
                "lower",
                decimals=2,
            ),
            Row(
                WARM_PULL,
                f"Warm pull, same image (median of {cfg.warm_pulls})",
                "s",
                "lower",
                decimals=2,
            ),
        ]

    def run(self, ctx: Context, rows: Rows) -> None:
        upstream, images, dest = ctx.upstream, ctx.images.pulls, ctx.tmp / "pull-dest"

        def pull(target: Target) -> float:
            return skopeo_pull(ctx.runner, target.host, images[target.name], dest)

        def cold(target: Target) -> tuple[float, dict[str, Any]]:
            image = images[target.name]
            upstream.wait_idle(quiet=0.5, timeout=120)
            upstream.clear_log()
            seconds = pull(target)
            upstream.wait_idle(quiet=1.0, timeout=120)  # registry:2 fills its cache afterwards
            blob_gets = upstream.count("GET", "^" + re.escape(f"/v2/{image.repo}/blobs/"))
            return seconds, {
                "repo": image.ref,
                "blobs": len(image.blobs),
                "bytes": image.total,
                "upstream_blob_gets": blob_gets,
            }

        def warm_prepare(target: Target) -> dict[str, Any]:
            pull(target)  # warm-up (cached since the cold row)
            upstream.clear_log()
            return {"repo": images[target.name].ref}

        def warm_round(target: Target) -> tuple[float, dict[str, Any]]:
            seconds = pull(target)
            return seconds, {"s": round(seconds, 3)}

        def warm_finish(target: Target) -> dict[str, Any]:
            repo = images[target.name].repo
            return {"upstream_blob_gets": upstream.count("GET", f"^/v2/{re.escape(repo)}/blobs/")}

        measure(ctx.console, rows[COLD_PULL], ctx.targets, cold)
        measure_rounds(
            ctx.console,
            rows[WARM_PULL],
            ctx.targets,
            prepare=warm_prepare,
            one_round=warm_round,
            rounds=ctx.cfg.warm_pulls,
            finish=warm_finish,
        )
