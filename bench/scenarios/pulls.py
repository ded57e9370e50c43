"""Cold and warm pull time with skopeo (a different image per proxy for the cold pull, and
one more pulled from the upstream itself)."""

from __future__ import annotations

import re
from typing import Any

from bench.clients import skopeo_pull
from bench.config import DIRECT_NAME, MIRROR_NAME, Config
from bench.context import Context
from bench.measure import Target, measure, measure_rounds
from bench.report import Row, copy_figures, ratio_at_most, ratio_target
from bench.scenarios.base import Rows, Scenario

__all__ = ["COLD_PULL", "COLD_VS_DIRECT", "WARM_PULL", "Pulls"]

COLD_PULL, COLD_VS_DIRECT, WARM_PULL = "cold_pull", "cold_pull_vs_direct", "warm_pull"
MAX_VS_DIRECT = 1.1


class Pulls(Scenario):
    """One cold pull per proxy and one from the upstream (a third image of the same shape),
    then warm pulls through the proxies, alternating (median)."""

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
                COLD_VS_DIRECT,
                "  … against a direct pull from the upstream",
                "s",
                "lower",
                decimals=2,
                baseline=DIRECT_NAME,
                target=ratio_target(MAX_VS_DIRECT, "≤", DIRECT_NAME),
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
            ctx.settle()
            upstream.clear_log()
            seconds = pull(target)
            ctx.settle()  # registry:2 fills its cache afterwards
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

        measure(ctx.console, rows[COLD_PULL], [*ctx.targets, ctx.direct], cold)
        copy_figures(rows[COLD_PULL], rows[COLD_VS_DIRECT], [MIRROR_NAME, DIRECT_NAME])
        measure_rounds(
            ctx.console,
            rows[WARM_PULL],
            ctx.targets,
            prepare=warm_prepare,
            one_round=warm_round,
            rounds=ctx.cfg.warm_pulls,
            finish=warm_finish,
        )

    def evaluate(self, rows: Rows) -> None:
        ratio_at_most(rows[COLD_VS_DIRECT], MAX_VS_DIRECT)
