"""Blob cache hits: MB/s and server CPU per GiB, against registry:2 and against nginx's
sendfile of the very file the mirror cached."""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path
from typing import Any

from bench.clients import curl_get, sha256_file
from bench.config import MB, MIRROR_NAME, NGINX_NAME, REGISTRY_NAME, Config
from bench.context import Context
from bench.errors import BenchError
from bench.measure import Target, measure_rounds, upstream_client
from bench.nginx import StaticNginx
from bench.procs import cpu_between, cpu_snapshot
from bench.report import Row, copy_figures, ratio_at_least, ratio_at_most, ratio_target
from bench.scenarios.base import Rows, Scenario
from tests.support.process import ServerError

__all__ = ["CPU", "THROUGHPUT", "VS_NGINX", "BlobHit"]

THROUGHPUT, VS_NGINX, CPU = "blob_throughput", "blob_vs_nginx", "blob_cpu"
TARGET_RATIO = 1.5  # mirror / registry:2, MB/s
MIN_VS_NGINX = 0.9  # mirror / nginx, MB/s
MAX_CPU_VS_NGINX = 1.5  # mirror / nginx, CPU seconds per GiB


class BlobHit(Scenario):
    """The big layer, cached by both proxies (one cold GET, checked), then rounds of
    concurrent GETs, alternating between the proxies and nginx.

    nginx (one process, sendfile) serves the file the mirror stored for that layer, with the
    same clients in the same pattern.
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
                VS_NGINX,
                "  … against nginx (sendfile) serving the mirror's file",
                "MB/s",
                "higher",
                baseline=NGINX_NAME,
                target=ratio_target(MIN_VS_NGINX, "≥", NGINX_NAME),
            ),
            Row(
                CPU,
                "  … server CPU time per GiB served from cache",
                "s/GiB",
                "lower",
                decimals=3,
                baseline=NGINX_NAME,
                target=ratio_target(MAX_CPU_VS_NGINX, "≤", NGINX_NAME),
            ),
        ]

    def run(self, ctx: Context, rows: Rows) -> None:
        blob_row = rows[THROUGHPUT]
        with contextlib.ExitStack() as stack:
            targets = list(ctx.targets)
            try:
                root = store_layout(ctx.mirror.root, list(ctx.images.big.blobs)[-1])[1]
                nginx = StaticNginx(ctx.tmp / "nginx", root)
                stack.callback(nginx.stop)
                nginx.start()
            except (ServerError, OSError, ImportError) as exc:
                message = f"{NGINX_NAME}: did not start: {exc}"
                ctx.console.print(f"[red]  {message}[/]")
                for row in rows.values():
                    row.errors.append(message)
            else:
                ctx.console.print(f"  {NGINX_NAME} (sendfile) {nginx.host} (pid {nginx.pid})")
                targets.append(
                    Target(
                        NGINX_NAME,
                        nginx.host,
                        nginx.pid,
                        lambda: nginx.running,
                        nginx.stderr_tail,
                    )
                )
            blob_throughput(ctx, blob_row, targets)
        copy_figures(blob_row, rows[VS_NGINX], [MIRROR_NAME, NGINX_NAME])
        rows[CPU].errors += [e for e in blob_row.errors if e not in rows[CPU].errors]
        for name, det in blob_row.details.items():
            if isinstance(det, dict) and det.get("rounds"):
                per_gib = [r["server_cpu_s_per_gib"] for r in det["rounds"]]
                rows[CPU].values[name] = statistics.median(per_gib)
        for name in (MIRROR_NAME, REGISTRY_NAME, NGINX_NAME):
            if name in blob_row.flags:
                rows[CPU].flags.add(name)

    def evaluate(self, rows: Rows) -> None:
        ratio_at_least(rows[THROUGHPUT], TARGET_RATIO)
        ratio_at_least(rows[VS_NGINX], MIN_VS_NGINX)
        ratio_at_most(rows[CPU], MAX_CPU_VS_NGINX)


def store_layout(root: Path, digest: str) -> tuple[Path, Path]:
    """Where the mirror's store under ``root`` keeps ``digest``, and the directory below which
    it keeps every blob (its own layout code, imported only when nginx needs it)."""
    from tests.support.store import blob_file, blobs_dir  # noqa: PLC0415

    return blob_file(root, digest), blobs_dir(root)


def cached_file(ctx: Context, digest: str, size: int, timeout: float = 60.0) -> Path:
    """The mirror's file of ``digest``, once it is published with all its bytes."""
    path = store_layout(ctx.mirror.root, digest)[0]
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if path.stat().st_size == size:
                return path
        if time.monotonic() > deadline:
            raise BenchError(f"the mirror's file {path} did not appear with {size} bytes")
        time.sleep(0.05)


def blob_throughput(ctx: Context, row: Row, targets: list[Target]) -> None:
    cfg, runner, upstream, image = ctx.cfg, ctx.runner, ctx.upstream, ctx.images.big
    digest = list(image.blobs)[-1]  # the big layer
    size = image.blobs[digest]
    nginx_path: list[str] = []  # the path of the mirror's file under nginx, once known

    def url(target: Target) -> str:
        if target.name == NGINX_NAME:
            return f"{target.url}/{nginx_path[0]}"
        return f"{target.url}/v2/{image.repo}/blobs/{digest}"

    def prepare(target: Target) -> dict[str, Any]:
        if target.name == NGINX_NAME:
            path = cached_file(ctx, digest, size)
            nginx_path.append(path.relative_to(store_layout(ctx.mirror.root, digest)[1]).as_posix())
        # The first GET (through a proxy: a cache miss that fills its cache); content checked.
        dest = ctx.scratch / f"cold-{target.pid}.blob"
        try:
            cold = curl_get(runner, url(target), dest)
            if cold.code != 200 or cold.size != size:
                raise BenchError(f"cold GET -> {cold.code}, {cold.size} of {size} bytes")
            if sha256_file(dest) != digest:
                raise BenchError("cold GET returned wrong content (sha256 mismatch)")
        finally:
            dest.unlink(missing_ok=True)
        ctx.settle()  # registry:2 stores in the background
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
        cpu_before = cpu_snapshot(target.pid)
        start = time.monotonic()
        results = runner.parallel(
            lambda _: curl_get(runner, url(target)), cfg.blob_gets, cfg.blob_concurrency
        )
        wall = time.monotonic() - start
        cpu = cpu_between(cpu_before, cpu_snapshot(target.pid))
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
        if target.name == NGINX_NAME:
            return {"file": nginx_path[0]}
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
        targets,
        prepare=prepare,
        one_round=one_round,
        rounds=cfg.blob_rounds,
        finish=finish,
    )
