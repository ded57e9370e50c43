"""The project's container image, built by ``deploy/image/build.sh`` (what ``make image``
runs), and the mirror run from it by a real podman, the way these machines run containers:
``--runtime runc``, ``--cgroup-manager cgroupfs``, ``--network host`` and explicit
``--ulimit`` values below the hard limits.

    image = build_image(workdir, tag="registry-mirror:test")
    podman.run("load", "--input", str(image.archive))
    with MirrorContainer(podman, image.tag, "m1", port, env={...}, volume="cache") as mirror:
        ...  # mirror.url, mirror.pid(), mirror.cgroup_memory()
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import httpx

from .podman import Podman

__all__ = [
    "BUILD_SCRIPT",
    "SEED_LIMITS",
    "ULIMITS",
    "BuiltImage",
    "MirrorContainer",
    "build_image",
    "cgroup_memory",
]

REPO: Final = Path(__file__).resolve().parents[2]
BUILD_SCRIPT: Final = REPO / "deploy" / "image" / "build.sh"

#: The deployment this image replaces: memory reserved 16 MiB, capped at 250 MiB.
SEED_LIMITS: Final = ("--memory", "250m", "--memory-reservation", "16m")
#: Below this machine's hard limits (``ulimit -Hn`` 20000, ``-Hu`` far above).
ULIMITS: Final = ("--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096")


@dataclass(frozen=True, slots=True)
class BuiltImage:
    tag: str
    image_id: str
    archive: Path  # an oci-archive of it, for ``podman load``
    output: str  # what the build printed


def build_image(workdir: Path, tag: str) -> BuiltImage:
    """Run the build script as ``make image`` does, with this interpreter's Python (3.11,
    like the image's) building the wheels."""
    workdir.mkdir(parents=True, exist_ok=True)
    archive = workdir / "image.tar"
    proc = subprocess.run(
        [str(BUILD_SCRIPT), "--python", sys.executable, "--tag", tag, "--archive", str(archive)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"build.sh -> {proc.returncode}\n{output[-4000:]}"
    found = re.search(r"image ID ([0-9a-f]{64})", proc.stdout)
    assert found, output
    return BuiltImage(tag, found[1], archive, output)


def cgroup_memory(pid: int) -> dict[str, int]:
    """The memory cgroup's limit, soft limit (the reservation) and peak usage of ``pid``,
    cgroup v1 or v2."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            return {
                "limit": int((base / "memory.limit_in_bytes").read_text()),
                "reservation": int((base / "memory.soft_limit_in_bytes").read_text()),
                "peak": int((base / "memory.max_usage_in_bytes").read_text()),
            }
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
            peak = base / "memory.peak"
            return {
                "limit": int((base / "memory.max").read_text()),
                "reservation": int((base / "memory.low").read_text()),
                "peak": int(peak.read_text()) if peak.exists() else 0,
            }
    raise AssertionError(f"no memory cgroup for {pid}")


class MirrorContainer:
    """``podman run -d`` of the image as ``name``, listening on ``port`` of the host's
    network; ``options`` go to ``podman run`` (the seed's limits and the ulimits are
    always there), ``args`` after the image (the mirror's command line)."""

    def __init__(
        self,
        podman: Podman,
        image: str,
        name: str,
        port: int,
        *,
        env: Mapping[str, str] | None = None,
        options: Sequence[str] = (),
        args: Sequence[str] = (),
        scheme: str = "http",
    ) -> None:
        self.podman = podman
        self.image = image
        self.name = name
        self.port = port
        self.env = {"REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}", **(env or {})}
        self.options = list(options)
        self.args = list(args)
        self.url = f"{scheme}://127.0.0.1:{port}"

    def podman_run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.podman.attempt("--runtime", "runc", *args, timeout=timeout)

    def start(self, timeout: float = 60.0) -> Self:
        env = [f"--env={key}={value}" for key, value in self.env.items()]
        proc = self.podman_run(
            "run", "--detach", "--name", self.name, "--network", "host",
            *SEED_LIMITS, *ULIMITS, *env, *self.options, self.image, *self.args,
        )  # fmt: skip
        assert proc.returncode == 0, f"podman run -> {proc.returncode}\n{proc.stderr}"
        self.wait_ready(timeout)
        return self

    def restart(self, timeout: float = 60.0) -> Self:
        proc = self.podman_run("start", self.name)
        assert proc.returncode == 0, proc.stderr
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.state().get("Running"):
                raise AssertionError(f"{self.name} exited: {self.state()}\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/readyz", verify=False, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not ready within {timeout}s\n{self.logs()}")

    def inspect(self) -> dict[str, Any]:
        proc = self.podman_run("container", "inspect", self.name)
        assert proc.returncode == 0, proc.stderr
        (info,) = json.loads(proc.stdout)
        assert isinstance(info, dict)
        return info

    def state(self) -> dict[str, Any]:
        state = self.inspect()["State"]
        assert isinstance(state, dict)
        return state

    def pid(self) -> int:
        pid = int(self.state()["Pid"])
        assert pid > 0, f"{self.name} is not running"
        return pid

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return self.podman_run("exec", self.name, *command)

    def logs(self) -> str:
        proc = self.podman_run("logs", self.name)
        return proc.stdout + proc.stderr

    def stop(self, timeout: int = 40) -> tuple[int, float]:
        """``podman stop`` (SIGTERM, SIGKILL after ``timeout`` s): the exit code, and the
        seconds it took."""
        began = time.monotonic()
        proc = self.podman_run("stop", "--time", str(timeout), self.name, timeout=timeout + 30)
        took = time.monotonic() - began
        assert proc.returncode == 0, proc.stderr
        return int(self.state()["ExitCode"]), took

    def remove(self) -> None:
        self.podman_run("rm", "--force", "--time", "0", self.name)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.remove()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()
