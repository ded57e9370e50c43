"""Before a run: the tools it needs, and what the JSON records about the machine."""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.clients import ensure_wrk
from bench.errors import BenchError
from bench.procs import tool_version

__all__ = ["describe", "make_scratch", "preflight"]

SHM = Path("/dev/shm")


def preflight(mirror_bin: Path, console: Console) -> str | None:
    """Fail unless curl, skopeo, docker-registry and the mirror exist; path of wrk or None."""
    for tool in ("curl", "skopeo"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed (apt-get install -y {tool})")
    if shutil.which("docker-registry") is None:
        raise BenchError("docker-registry is not installed (apt-get install -y docker-registry)")
    if not mirror_bin.exists():
        raise BenchError(f"{mirror_bin} does not exist (pip install -e . in the venv?)")
    return ensure_wrk(console)


def describe(wrk: str | None, console: Console) -> dict[str, Any]:
    """Load, versions of Python, the kernel and the tools; warns when the machine is busy."""
    load = os.getloadavg()
    if load[0] > 1.0:
        console.print(
            f"[yellow]warning: load average {load[0]:.1f} on {os.cpu_count()} CPUs before the run; "
            "other work on the machine makes the figures noisy[/]"
        )
    return {
        "loadavg_before": load,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "docker_registry": tool_version(["docker-registry", "--version"]),
        "skopeo": tool_version(["skopeo", "--version"]),
        "curl": tool_version(["curl", "--version"]),
        "wrk": tool_version(["wrk", "-v"]) if wrk else None,
    }


def make_scratch(tmp: Path, need: int) -> Path:
    """A directory for the clients' downloads: on tmpfs if it has ``need`` bytes free (no
    disk write-back competing with the servers), else in ``tmp``. The caller removes it."""
    try:
        if SHM.is_dir() and os.access(SHM, os.W_OK) and shutil.disk_usage(SHM).free > need:
            return Path(tempfile.mkdtemp(prefix="registry-mirror-bench-", dir=SHM))
    except OSError:
        pass
    scratch = tmp / "scratch"
    scratch.mkdir()
    return scratch
