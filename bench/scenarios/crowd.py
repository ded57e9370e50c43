"""A crowd of concurrent cold followers of one fresh blob: every byte checked, the servers'
memory watched while they serve it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.blobs import FreshBlob
from bench.clients import StreamResult, stream_sha256
from bench.config import MIB, MIRROR_NAME, REGISTRY_NAME, Config
from bench.context import Context
from bench.errors import BenchError
from bench.measure import MEASURE_ERRORS, Measurement, Target, measure, upstream_downloads
from bench.procs import kib_field, proc_status
from bench.report import Row, copy_errors
from bench.scenarios.base import Rows, Scenario, push_fresh, slug

__all__ = ["DOWNLOADS", "RSS", "WALL", "Crowd"]

WALL, RSS, DOWNLOADS = "crowd_wall", "crowd_rss", "crowd_downloads"


class Crowd(Scenario):
    """Per proxy: ``crowd_clients`` GETs of one fresh blob started together (threads of this
    process, each hashing the body as it arrives; nothing is stored). The server's RSS is
    sampled meanwhile; its ``VmHWM`` at the end of the run (the peak-RSS row) covers it."""

    group = "crowd"
    phase = "crowd"

    def title(self, cfg: Config) -> str:
        return f"{cfg.crowd_clients} concurrent cold followers of one {cfg.crowd_mib} MiB blob"

    def rows(self, cfg: Config) -> list[Row]:
        return [
            Row(
                WALL,
                f"{cfg.crowd_clients} cold followers of one {cfg.crowd_mib} MiB blob at once: "
                "all verified",
                "s",
                "lower",
                decimals=2,
            ),
            Row(
                RSS,
                "  … server RSS at most, sampled while serving them",
                "MiB",
                "lower",
                decimals=1,
            ),
            Row(
                DOWNLOADS,
                "  … upstream downloads of that blob",
                "GETs",
                "lower",
                decimals=0,
            ),
        ]

    def run(self, ctx: Context, rows: Rows) -> None:
        size = ctx.cfg.crowd_mib * MIB
        blobs = push_fresh(
            ctx, rows, {t.name: (f"bench/crowd-{slug(t.name)}", size, 1) for t in ctx.targets}
        )
        if blobs is None:
            return
        row = rows[WALL]
        measure(ctx.console, row, ctx.targets, crowd(ctx, {n: b[0] for n, b in blobs.items()}))
        names = [MIRROR_NAME, REGISTRY_NAME]
        for key in (RSS, DOWNLOADS):
            copy_errors(row, rows[key], names)
        for name in names:
            det = row.details.get(name, {})
            if det.get("rss_max_MiB") is not None:
                rows[RSS].values[name] = det["rss_max_MiB"]
            if "upstream_downloads" in det:
                rows[DOWNLOADS].values[name] = det["upstream_downloads"]


class RssSampler:
    """The most ``VmRSS`` of a process seen, sampled every ``interval`` s in a thread."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.max_mib: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while True:
            rss = kib_field(proc_status(self.pid), "VmRSS")
            if rss is not None and (self.max_mib is None or rss > self.max_mib):
                self.max_mib = rss
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def crowd(ctx: Context, blobs: dict[str, FreshBlob]) -> Measurement:
    cfg = ctx.cfg

    def fn(target: Target) -> tuple[float, dict[str, Any]]:
        blob = blobs[target.name]
        clients = cfg.crowd_clients
        ctx.settle()
        ctx.upstream.clear_log()
        hwm_before = kib_field(proc_status(target.pid), "VmHWM")
        gate = threading.Barrier(clients, timeout=60)
        stop = threading.Event()

        def client(i: int) -> StreamResult | str:
            gate.wait()
            try:
                return stream_sha256(target.host, blob.path(), stop=stop, timeout=900)
            except MEASURE_ERRORS as exc:
                return f"client {i}: {exc}"

        with RssSampler(target.pid) as rss, ThreadPoolExecutor(max_workers=clients) as pool:
            start = time.monotonic()
            futures = [pool.submit(client, i) for i in range(clients)]
            try:
                results = [f.result() for f in futures]
            except BaseException:
                stop.set()
                gate.abort()
                raise
            wall = time.monotonic() - start
        hwm_after = kib_field(proc_status(target.pid), "VmHWM")
        failures = [r for r in results if isinstance(r, str)]
        done = [r for r in results if isinstance(r, StreamResult)]
        wrong = [
            r for r in done if r.status != 200 or r.size != blob.size or r.digest != blob.digest
        ]
        failures += [f"{r.status}, {r.size} of {blob.size} bytes, {r.digest[:19]}" for r in wrong]
        ctx.settle()
        downloads, sent = upstream_downloads(ctx.upstream, blob.digest)
        rss_max = rss.max_mib
        if hwm_before is not None and hwm_after is not None and hwm_after > hwm_before:
            rss_max = max(rss_max or 0.0, hwm_after)  # a new peak: VmHWM saw it exactly
        details: dict[str, Any] = {
            "blob_bytes": blob.size,
            "clients": clients,
            "all_clients_wall_s": round(wall, 3),
            "slowest_client_s": max((r.seconds for r in done), default=None),
            "rss_max_MiB": rss_max,
            "VmHWM_before_MiB": hwm_before,
            "VmHWM_after_MiB": hwm_after,
            "upstream_downloads": downloads,
            "upstream_bytes": sent,
            "verified_clients": len(done) - len(wrong),
            "failed_clients": failures[:20],
        }
        if failures:
            raise BenchError(
                f"{len(failures)}/{clients} clients failed: " + "; ".join(failures[:3]),
                details,
                wall,
            )
        return wall, details

    return fn
