"""What every scenario works with: the settings, the three servers, the images, the clients."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.blobs import FreshBlobs
from bench.config import DIRECT_NAME, MIRROR_NAME, REGISTRY_NAME, Config
from bench.images import Images, push_images
from bench.measure import Target
from bench.procs import Runner, child_pids, kib_field, proc_status, quiesce
from tests.support.mirror import MirrorProcess
from tests.support.registry import RegistryProcess

__all__ = ["Context", "open_context"]


@dataclass
class Context:
    """One run: passed to every scenario (nothing of a run lives in module state)."""

    cfg: Config
    console: Console
    tmp: Path
    runner: Runner  # the client processes
    wrk: str | None  # path of wrk, None if it is not installed
    upstream: RegistryProcess
    mirror: MirrorProcess
    targets: list[Target]  # the mirror, then registry:2 in proxy mode
    direct: Target  # the upstream itself, for downloads without a proxy
    images: Images
    fresh: FreshBlobs  # blobs pushed for the cold scenarios
    scratch: Path  # where clients write what they downloaded (tmpfs when there is room)
    forks: set[int] = field(default_factory=set)  # child processes of the mirror seen
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)  # memory after each phase
    unsettled: int = 0  # times settle() gave up waiting

    def settle(self, quiet: float = 0.3, timeout: float = 120.0) -> None:
        """Before a cold measurement: let the work of the last one end (background fills).

        Dirty pages are written out, then it waits until the upstream's access log and
        every server's CPU have been quiet for ``quiet`` seconds.
        """
        os.sync()
        pids = [self.upstream.pid, *(t.pid for t in self.targets)]
        if not quiesce(pids, [self.upstream.stdout_path], window=quiet, timeout=timeout):
            self.unsettled += 1
            self.console.print(f"[yellow]  servers still busy after {timeout:.0f}s; going on[/]")

    def checkpoint(self, phase: str) -> None:
        """Memory of both servers and the mirror's children after each phase."""
        self.forks.update(child_pids(self.mirror.pid))
        self.phases[phase] = {"loadavg_1m": round(os.getloadavg()[0], 2)}
        for t in self.targets:
            status = proc_status(t.pid)
            self.phases[phase][t.name] = {
                "VmHWM_MiB": kib_field(status, "VmHWM"),
                "VmRSS_MiB": kib_field(status, "VmRSS"),
            }


def open_context(
    stack: contextlib.ExitStack,
    *,
    cfg: Config,
    console: Console,
    tmp: Path,
    runner: Runner,
    wrk: str | None,
    mirror_bin: Path,
    scratch: Path,
) -> Context:
    """Start the upstream, push the images, start both proxies (stopped when ``stack`` closes)."""
    upstream = RegistryProcess(tmp / "upstream")
    stack.callback(upstream.stop)
    upstream.start()
    images = push_images(cfg, upstream.url, console)

    mirror = MirrorProcess(
        tmp / "mirror",
        upstream.url,
        args=["--log-level", "warning"],
        dockerhub=False,
        binary=str(mirror_bin),
    )
    stack.callback(mirror.stop)
    mirror.start(timeout=30)
    proxy = RegistryProcess(tmp / "registry2-proxy", proxy_remoteurl=upstream.url)
    stack.callback(proxy.stop)
    proxy.start()
    console.print(
        f"upstream {upstream.url}, {MIRROR_NAME} {mirror.url} (pid {mirror.pid}), "
        f"{REGISTRY_NAME} proxy {proxy.url} (pid {proxy.pid})"
    )

    def registry_tail(lines: int) -> str:
        return proxy.stderr_tail(lines)

    targets = [
        Target(MIRROR_NAME, mirror.host, mirror.pid, lambda: mirror.running, mirror.stderr_tail),
        Target(REGISTRY_NAME, proxy.host, proxy.pid, lambda: proxy.running, registry_tail),
    ]
    direct = Target(
        DIRECT_NAME, upstream.host, upstream.pid, lambda: upstream.running, upstream.stderr_tail
    )
    ctx = Context(
        cfg,
        console,
        tmp,
        runner,
        wrk,
        upstream,
        mirror,
        targets,
        direct,
        images,
        FreshBlobs(upstream.url),
        scratch,
    )
    ctx.checkpoint("start")
    return ctx
