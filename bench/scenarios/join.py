"""Clients joining one cold fill: the slowest of them against one cold GET alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.blobs import FreshBlob
from bench.clients import CurlResult, curl_get, sha256_file
from bench.config import MIB, MIRROR_NAME, REGISTRY_NAME, Config
from bench.context import Context
from bench.errors import BenchError
from bench.measure import MEASURE_ERRORS, Measurement, Target, measure, upstream_downloads
from bench.report import Row, copy_errors, mirror_at_most
from bench.scenarios.base import Rows, Scenario, push_fresh, slug
from bench.scenarios.cold import cold_get

__all__ = ["DOWNLOADS", "RATIO", "SINGLE", "SLOWEST", "Join"]

SLOWEST, SINGLE, RATIO, DOWNLOADS = "join_slowest", "join_single", "join_ratio", "join_downloads"
MAX_RATIO = 1.3  # the mirror's slowest joining client / its single cold GET


class Join(Scenario):
    """Per proxy: one cold GET of a fresh blob alone, then ``join_clients`` GETs of another
    fresh blob of the same size, started together (a barrier) so that all but one join the
    fill the first started. Each client writes to a file of its own, hashed afterwards."""

    group = "join"
    phase = "join"

    def title(self, cfg: Config) -> str:
        return f"{cfg.join_clients} clients joining one cold {cfg.cold_mib} MiB fill"

    def rows(self, cfg: Config) -> list[Row]:
        return [
            Row(
                SLOWEST,
                f"{cfg.join_clients} clients joining one cold {cfg.cold_mib} MiB fill: "
                "the slowest client",
                "s",
                "lower",
                decimals=2,
            ),
            Row(
                SINGLE,
                "  … one cold GET of a same-sized fresh blob, just before",
                "s",
                "lower",
                decimals=2,
            ),
            Row(
                RATIO,
                "  … slowest joining client / that single GET",
                "x",
                "lower",
                decimals=2,
                baseline=None,
                target=f"mirror ≤ {MAX_RATIO:g}x",
            ),
            Row(
                DOWNLOADS,
                "  … upstream downloads of the joined blob",
                "GETs",
                "lower",
                decimals=0,
            ),
        ]

    def run(self, ctx: Context, rows: Rows) -> None:
        size = ctx.cfg.cold_mib * MIB
        blobs = push_fresh(
            ctx, rows, {t.name: (f"bench/join-{slug(t.name)}", size, 2) for t in ctx.targets}
        )
        if blobs is None:
            return
        row = rows[SLOWEST]
        measure(ctx.console, row, ctx.targets, join(ctx, blobs))
        names = [MIRROR_NAME, REGISTRY_NAME]
        for key in (SINGLE, RATIO, DOWNLOADS):
            copy_errors(row, rows[key], names)
        for name in names:
            det = row.details.get(name, {})
            if "single_s" in det:
                rows[SINGLE].values[name] = det["single_s"]
            if "slowest_over_single" in det:
                rows[RATIO].values[name] = det["slowest_over_single"]
            if "upstream_downloads" in det:
                rows[DOWNLOADS].values[name] = det["upstream_downloads"]

    def evaluate(self, rows: Rows) -> None:
        mirror_at_most(rows[RATIO], MAX_RATIO)


def join(ctx: Context, blobs: dict[str, list[FreshBlob]]) -> Measurement:
    cfg, runner = ctx.cfg, ctx.runner

    def fn(target: Target) -> tuple[float, dict[str, Any]]:
        single_blob, blob = blobs[target.name]
        single = cold_get(ctx, target, single_blob, "join-single")
        ctx.upstream.clear_log()
        clients = cfg.join_clients
        url = f"{target.url}{blob.path()}"
        files = [ctx.scratch / f"join-{i}" for i in range(clients)]
        gate = threading.Barrier(clients, timeout=60)
        released: list[float] = []

        def client(i: int) -> CurlResult | str:
            gate.wait()
            released.append(time.monotonic())
            try:
                return curl_get(runner, url, files[i], timeout=900)
            except MEASURE_ERRORS as exc:
                return str(exc)

        try:
            results = runner.parallel(client, clients, clients)
            end = time.monotonic()
            failures = [f"client {i}: {r}" for i, r in enumerate(results) if isinstance(r, str)]
            done = [(i, r) for i, r in enumerate(results) if isinstance(r, CurlResult)]
            failures += [
                f"client {i}: {r.code}, {r.size} of {blob.size} bytes"
                for i, r in done
                if r.code != 200 or r.size != blob.size
            ]
            with ThreadPoolExecutor(max_workers=2) as pool:  # hashlib works outside the GIL
                digests = list(pool.map(sha256_file, [files[i] for i, _ in done]))
            failures += [
                f"client {i}: wrong content (sha256 mismatch)"
                for (i, r), digest in zip(done, digests, strict=True)
                if r.code == 200 and r.size == blob.size and digest != blob.digest
            ]
        finally:
            for path in files:
                path.unlink(missing_ok=True)
        ctx.settle()
        downloads, sent = upstream_downloads(ctx.upstream, blob.digest)
        times = [r.seconds for _, r in done]
        slowest = max(times) if times else None
        details: dict[str, Any] = {
            "blob_bytes": blob.size,
            "clients": clients,
            "single": single,
            "single_s": single["s"],
            "per_client_s": times,
            "per_client_first_byte_s": [r.first_byte for _, r in done],
            "all_clients_wall_s": round(end - min(released), 3) if released else None,
            "upstream_downloads": downloads,
            "upstream_bytes": sent,
            "failed_clients": failures,
        }
        if slowest is not None:
            details["slowest_s"] = slowest
            details["slowest_over_single"] = slowest / single["s"]
        if failures or slowest is None:
            raise BenchError(
                f"{len(failures)}/{clients} clients failed: " + "; ".join(failures[:3]),
                details,
                slowest,
            )
        return slowest, details

    return fn
