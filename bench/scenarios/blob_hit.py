"""Blob cache hits: MB/s and server CPU per GiB; the first (cache-miss) GET of that blob."""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.clients import curl_get, sha256_file
from bench.config import MB, Config
from bench.context import Context
from bench.errors import BenchError
from bench.measure import Target, measure_rounds, upstream_client
from bench.procs import cpu_seconds
from bench.report import Row, ratio_at_least, ratio_target
from bench.scenarios.base import Rows, Scenario

__all__ = ["COLD", "CPU", "THROUGHPUT", "BlobHit"]

THROUGHPUT, CPU, COLD = "blob_throughput", "blob_cpu", "blob_cold"
TARGET_RATIO = 1.5


class BlobHit(Scenario):
    """The big layer, cached by both (one cold GET, checked), then rounds of concurrent GETs.

    The cold GET that fills the cache is the cache-miss row (a single sample).
    """

    group = "blob"
    phase = "blob"

    def title(self, cfg: Config) -> str:
        return "blob cache-hit throughput"

    def rows(self, cfg: Config) -> list[Row]:
        return [
            Row(
                THROUGHPUT,
                f"Blob cache hit, {cfg.blob_mib} MiB x {cfg.blob_gets} "
                f"({cfg.blob_concurrency} concurrent)",
                "MB/s",
                "higher",
                target=ratio_target(TARGET_RATIO),
            ),
            Row(
                CPU,
                "  … server CPU time per GiB served from cache",
                "s/GiB",
                "lower",
                decimals=3,
            ),
            Row(
                COLD,
                "  … first GET of that blob (cache miss, single sample)",
                "MB/s",
                "higher",
            ),
        ]

    def run(self, ctx: Context, rows: Rows) -> None:
        blob_row = rows[THROUGHPUT]
        blob_throughput(ctx, blob_row)
        for name, det in blob_row.details.items():
            if isinstance(det, dict) and det.get("cold_get_s"):
                rows[COLD].values[name] = det["blob_bytes"] / det["cold_get_s"] / MB
            if isinstance(det, dict) and det.get("rounds"):
                per_gib = [r["server_cpu_s_per_gib"] for r in det["rounds"]]
                rows[CPU].values[name] = statistics.median(per_gib)

    def evaluate(self, rows: Rows) -> None:
        ratio_at_least(rows[THROUGHPUT], TARGET_RATIO)


def blob_throughput(ctx: Context, row: Row) -> None:
    cfg, runner, upstream, image = ctx.cfg, ctx.runner, ctx.upstream, ctx.images.big
    digest = list(image.blobs)[-1]  # the big layer
    size = image.blobs[digest]

    def url(target: Target) -> str:
        return f"{target.url}/v2/{image.repo}/blobs/{digest}"

    def prepare(target: Target) -> dict[str, Any]:
        # Cold pull through the proxy (fills its cache); check the content once.
        dest = ctx.tmp / f"cold-{target.pid}.blob"
        try:
            cold = curl_get(runner, url(target), dest)
            if cold.code != 200 or cold.size != size:
                raise BenchError(f"cold GET -> {cold.code}, {cold.size} of {size} bytes")
            if sha256_file(dest) != digest:
                raise BenchError("cold GET returned wrong content (sha256 mismatch)")
        finally:
            dest.unlink(missing_ok=True)
        upstream.wait_idle(quiet=1.0, timeout=120)  # registry:2 stores in the background
        warm = curl_get(runner, url(target))  # warm-up, discarded
        if warm.code != 200 or warm.size != size:
            raise BenchError(f"warm-up GET -> {warm.code}, {warm.size} of {size} bytes")
        upstream.clear_log()
        return {
            "blob_bytes": size,
            "gets_per_round": cfg.blob_gets,
            "concurrency": cfg.blob_concurrency,
            "cold_get_s": cold.seconds,
        }

    def one_round(target: Target) -> tuple[float, dict[str, Any]]:
        cpu_before = cpu_seconds(target.pid)
        start = time.monotonic()
        results = runner.parallel(
            lambda _: curl_get(runner, url(target)), cfg.blob_gets, cfg.blob_concurrency
        )
        wall = time.monotonic() - start
        cpu = cpu_seconds(target.pid) - cpu_before
        bad = [r for r in results if r.code != 200 or r.size != size]
        if bad:
            raise BenchError(
                f"{len(bad)}/{len(results)} GETs wrong: "
                + ", ".join(f"{r.code}/{r.size}B" for r in bad[:4])
                + f" (expected 200/{size}B)"
            )
        mb_s = sum(r.size for r in results) / wall / MB
        return mb_s, {
            "mb_per_s": round(mb_s, 1),
            "server_cpu_s_per_gib": cpu / (sum(r.size for r in results) / 2**30),
            "wall_s": round(wall, 3),
            "per_get_s": [r.seconds for r in results],
        }

    def finish(target: Target) -> dict[str, Any]:
        gets = sum(
            1
            for r in upstream.requests()
            if r.method == "GET"
            and r.path.endswith(f"/blobs/{digest}")
            and upstream_client(target, r.user_agent)
        )
        return {"upstream_gets_during_measurement": gets}

    measure_rounds(
        ctx.console,
        row,
        ctx.targets,
        prepare=prepare,
        one_round=one_round,
        rounds=cfg.blob_rounds,
        finish=finish,
    )
