"""Concurrent cold clients: upstream downloads per blob (followers of one fill) and wall time."""

from __future__ import annotations

import re
import shutil
import statistics
import threading
import time
from collections import Counter
from typing import Any

from bench.clients import http_get, sha256_bytes, sha256_file
from bench.config import MIRROR_NAME, Config
from bench.context import Context
from bench.errors import BenchError
from bench.measure import Measurement, Target, measure
from bench.procs import Proc
from bench.report import Row
from bench.scenarios.base import Rows, Scenario

__all__ = ["DOWNLOADS", "WALL", "Followers"]

DOWNLOADS, WALL = "herd_downloads_per_blob", "herd_wall"


class Followers(Scenario):
    """A fresh image per proxy; every client GETs the manifest at once, then all blobs at once.

    Upstream blob GETs (200/206) are counted from the upstream's access log; every client's
    bytes are checked by sha256.
    """

    group = "herd"
    phase = "herd"

    def title(self, cfg: Config) -> str:
        return f"{cfg.herd_clients} concurrent cold clients"

    def rows(self, cfg: Config) -> list[Row]:
        return [
            Row(
                DOWNLOADS,
                f"Upstream downloads per blob, {cfg.herd_clients} concurrent cold clients",
                "GETs",
                "lower",
                decimals=2,
                target="mirror = 1 per blob",
            ),
            Row(
                WALL,
                f"  … time until all {cfg.herd_clients} clients have the image",
                "s",
                "lower",
                decimals=2,
            ),
        ]

    def run(self, ctx: Context, rows: Rows) -> None:
        walls: dict[str, float] = {}
        measure(ctx.console, rows[DOWNLOADS], ctx.targets, herd(ctx, walls))
        rows[WALL].values.update(walls)
        for error in rows[DOWNLOADS].errors:
            rows[WALL].flags.add(error.partition(":")[0])

    def evaluate(self, rows: Rows) -> None:
        row = rows[DOWNLOADS]
        mirror = row.details.get(MIRROR_NAME, {})
        row.passed = (
            not row.failed_for(MIRROR_NAME)
            and row.value(MIRROR_NAME) is not None
            and mirror.get("max_downloads_per_blob") == 1
            and min(mirror.get("downloads_per_blob", {0: 0}).values()) == 1
        )


def herd(ctx: Context, wall_times: dict[str, float]) -> Measurement:
    cfg, runner, upstream, images = ctx.cfg, ctx.runner, ctx.upstream, ctx.images.herds

    def fn(target: Target) -> tuple[float, dict[str, Any]]:
        image = images[target.name]
        clients = cfg.herd_clients
        ctx.settle()
        upstream.clear_log()
        work = ctx.tmp / "herd"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        start = time.monotonic()
        failures: list[str] = []
        wrong = 0
        wall = 0.0
        try:
            # Phase 1: every client GETs the manifest by tag, all at once.
            gate = threading.Barrier(clients, timeout=60)

            def get_manifest(i: int) -> str:
                gate.wait()
                status, _, body = http_get(
                    target.host,
                    f"/v2/{image.repo}/manifests/{image.tag}",
                    {"Accept": image.media_type},
                )
                if status != 200:
                    raise BenchError(f"client {i}: manifest GET -> {status}")
                return sha256_bytes(body)

            got = runner.parallel(get_manifest, clients, clients)
            if any(d != image.digest for d in got):
                raise BenchError(f"manifest digests differ from {image.digest}: {set(got)}")

            # Phase 2: every client GETs all blobs (in parallel, one curl each), all at once.
            gate2 = threading.Barrier(clients, timeout=60)

            def get_blobs(i: int) -> Proc:
                args = ["curl", "-sS", "--no-progress-meter", "--noproxy", "*", "--fail"]
                args += ["--max-time", "600"]
                args += ["--parallel", "--parallel-immediate", "--parallel-max", "8"]
                args += ["-w", "%{http_code} %{size_download}\\n"]
                for digest in image.blobs:
                    args += [f"{target.url}/v2/{image.repo}/blobs/{digest}"]
                    args += ["-o", str(work / f"{i}-{digest.removeprefix('sha256:')}")]
                gate2.wait()
                return runner.run(args, timeout=660)

            procs = runner.parallel(get_blobs, clients, clients)
            wall = time.monotonic() - start
            for i, proc in enumerate(procs):
                if proc.returncode != 0:
                    failures.append(
                        f"client {i}: curl exited {proc.returncode}: {proc.stderr.strip()[:200]}"
                    )
            for i in range(clients):
                for digest in image.blobs:
                    path = work / f"{i}-{digest.removeprefix('sha256:')}"
                    if procs[i].returncode == 0 and (
                        not path.exists() or sha256_file(path) != digest
                    ):
                        wrong += 1
                    path.unlink(missing_ok=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        ctx.settle()  # registry:2's background cache fills
        downloads: Counter[str] = Counter()
        heads = 0
        manifest_reqs = 0
        upstream_bytes = 0
        for req in upstream.requests():
            if not req.path.startswith(f"/v2/{image.repo}/"):
                continue
            m = re.search(r"/blobs/(sha256:[0-9a-f]{64})$", req.path)
            if m is not None and req.method == "GET" and req.status in (200, 206):
                downloads[m[1]] += 1
                upstream_bytes += req.size
            elif m is not None and req.method == "HEAD":
                heads += 1
            elif "/manifests/" in req.path:
                manifest_reqs += 1
        per_blob = {d: downloads.get(d, 0) for d in image.blobs}
        layers = list(image.blobs)[1:]
        mean = statistics.mean(per_blob.values())
        details: dict[str, Any] = {
            "repo": image.ref,
            "clients": clients,
            "blob_sizes": image.blobs,
            "downloads_per_blob": per_blob,
            "max_downloads_per_blob": max(per_blob.values()),
            "mean_downloads_per_layer": statistics.mean(per_blob[d] for d in layers),
            "upstream_blob_heads": heads,
            "upstream_manifest_requests": manifest_reqs,
            "upstream_blob_bytes": upstream_bytes,
            "image_bytes": image.total,
            "all_clients_wall_s": round(wall, 3),
            "failed_clients": failures,
            "wrong_blobs": wrong,
        }
        wall_times[target.name] = wall
        if failures or wrong:
            raise BenchError(
                f"{len(failures)}/{clients} clients failed, {wrong} blobs with wrong bytes "
                f"(upstream downloads per blob meanwhile: {list(per_blob.values())}); "
                + "; ".join(failures[:3]),
                details,
                mean,
            )
        return mean, details

    return fn
