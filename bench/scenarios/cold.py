"""Cold GETs of big fresh blobs: each proxy against the other and against the upstream itself."""

from __future__ import annotations

import statistics
from typing import Any

from bench.blobs import FreshBlob
from bench.clients import curl_get, sha256_file
from bench.config import DIRECT_NAME, MB, MIB, Config
from bench.context import Context
from bench.errors import BenchError
from bench.measure import Target, measure_rounds, upstream_downloads
from bench.report import Row, copy_errors, ratio_at_least, ratio_at_most, ratio_target
from bench.scenarios.base import Rows, Scenario, push_fresh, slug

__all__ = ["COLD_MBS", "COLD_VS_DIRECT", "ColdGet", "cold_get"]

COLD_MBS, COLD_VS_DIRECT = "cold_get_mbs", "cold_get_vs_direct"
MIN_RATIO = 1.0  # mirror / registry:2, MB/s
MAX_VS_DIRECT = 2.0  # mirror / direct, seconds


def cold_get(ctx: Context, target: Target, blob: FreshBlob, name: str) -> dict[str, Any]:
    """GET a blob nobody asked for before into a scratch file; bytes checked after the clock
    stopped. The servers are let settle first; the upstream's downloads of it are counted."""
    ctx.settle()
    ctx.upstream.clear_log()
    dest = ctx.scratch / name
    try:
        res = curl_get(ctx.runner, f"{target.url}{blob.path()}", dest, timeout=900)
        if res.code != 200 or res.size != blob.size:
            raise BenchError(f"cold GET -> {res.code}, {res.size} of {blob.size} bytes")
        if sha256_file(dest) != blob.digest:
            raise BenchError("cold GET returned wrong content (sha256 mismatch)")
    finally:
        dest.unlink(missing_ok=True)
    ctx.settle()
    downloads, sent = upstream_downloads(ctx.upstream, blob.digest)
    return {
        "digest": blob.digest,
        "s": res.seconds,
        "first_byte_s": res.first_byte,
        "mb_per_s": blob.size / res.seconds / MB,
        "upstream_downloads": downloads,
        "upstream_bytes": sent,
    }


class ColdGet(Scenario):
    """A fresh blob per sample and subject (the mirror, registry:2, the upstream directly),
    the samples alternating between the three; median of the samples."""

    group = "cold"
    phase = "cold"

    def title(self, cfg: Config) -> str:
        return f"cold GET of fresh {cfg.cold_mib} MiB blobs"

    def rows(self, cfg: Config) -> list[Row]:
        return [
            Row(
                COLD_MBS,
                f"Cold GET, fresh {cfg.cold_mib} MiB blob (median of {cfg.cold_samples})",
                "MB/s",
                "higher",
                target=ratio_target(MIN_RATIO),
            ),
            Row(
                COLD_VS_DIRECT,
                "  … its time, against a direct GET from the upstream",
                "s",
                "lower",
                decimals=2,
                baseline=DIRECT_NAME,
                target=ratio_target(MAX_VS_DIRECT, "≤", DIRECT_NAME),
            ),
        ]

    def run(self, ctx: Context, rows: Rows) -> None:
        cfg = ctx.cfg
        subjects = [*ctx.targets, ctx.direct]
        size = cfg.cold_mib * MIB
        blobs = push_fresh(
            ctx,
            rows,
            {t.name: (f"bench/cold-{slug(t.name)}", size, cfg.cold_samples) for t in subjects},
        )
        if blobs is None:
            return
        done = dict.fromkeys(blobs, 0)

        def prepare(target: Target) -> dict[str, Any]:
            return {"blob_bytes": size, "samples": cfg.cold_samples}

        def one_round(target: Target) -> tuple[float, dict[str, Any]]:
            blob = blobs[target.name][done[target.name]]
            done[target.name] += 1
            info = cold_get(ctx, target, blob, f"cold-{done[target.name]}")
            return info["mb_per_s"], info

        def finish(target: Target) -> dict[str, Any]:
            return {}

        row = rows[COLD_MBS]
        measure_rounds(
            ctx.console,
            row,
            subjects,
            prepare=prepare,
            one_round=one_round,
            rounds=cfg.cold_samples,
            finish=finish,
        )
        seconds = rows[COLD_VS_DIRECT]
        copy_errors(row, seconds, [t.name for t in subjects])
        for name, det in row.details.items():
            if det.get("rounds"):
                seconds.values[name] = statistics.median(r["s"] for r in det["rounds"])

    def evaluate(self, rows: Rows) -> None:
        ratio_at_least(rows[COLD_MBS], MIN_RATIO)
        ratio_at_most(rows[COLD_VS_DIRECT], MAX_VS_DIRECT)
