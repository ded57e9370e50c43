"""podman of the tests' own: run as root with everything under a work directory
(``--root``/``--runroot``/``--tmpdir``, ``--storage-driver vfs``, ``--cgroup-manager cgroupfs
--events-backend file``, and ``HOME``, ``XDG_RUNTIME_DIR``, ``TMPDIR``, ``CONTAINERS_CONF``,
``CONTAINERS_STORAGE_CONF``, ``CONTAINERS_REGISTRIES_CONF`` pointing there)::

    with podman_factory() as make:
        podman = make(tmp_path / "podman", registries_conf(mirror.host))
        image_id = podman.pull("docker.io/library/app:1")

(Only containers/image's blob-info cache, which root's podman and skopeo keep in
``/var/lib/containers/cache``, cannot be moved; it changes nothing about pulls.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .clients import require_tools

__all__ = ["Podman", "PodmanFactory", "podman_factory"]


class Podman:
    """``podman`` with its own storage, state, config and temp directories under ``workdir``,
    using the registries.conf text ``registries``; ``extra_env`` is added to its environment."""

    def __init__(self, binary: str, workdir: Path, runroot: Path, registries: str) -> None:
        self.binary = binary
        self.workdir = workdir
        self.runroot = runroot  # podman refuses a runroot longer than 50 characters
        self.extra_env: dict[str, str] = {}
        for sub in ("home", "run", "tmp"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        (workdir / "run").chmod(0o700)
        self.registries_conf = workdir / "registries.conf"
        self.registries_conf.write_text(registries)
        (workdir / "containers.conf").write_text("")
        (workdir / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{runroot}"\ngraphroot = "{workdir / "root"}"\n'
        )

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")}
        return {
            **keep,
            "HOME": str(self.workdir / "home"),
            "XDG_RUNTIME_DIR": str(self.workdir / "run"),
            "TMPDIR": str(self.workdir / "tmp"),
            "CONTAINERS_CONF": str(self.workdir / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.workdir / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(self.registries_conf),
            **self.extra_env,
        }

    def attempt(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run podman with this instance's storage and config; the caller judges the result."""
        w = self.workdir
        command = [
            self.binary,
            "--root",
            str(w / "root"),
            "--runroot",
            str(self.runroot),
            "--tmpdir",
            str(w / "libpod"),
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            *args,
        ]
        return subprocess.run(
            command,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = self.attempt(*args, timeout=timeout)
        assert proc.returncode == 0, f"{' '.join(args)} -> {proc.returncode}\n{proc.stderr}"
        return proc

    def pull(self, ref: str, *options: str) -> str:
        """``podman pull``; returns the image ID it printed."""
        return self.run("pull", "--quiet", *options, ref).stdout.strip()

    def inspect(self, ref: str) -> dict[str, Any]:
        (info,) = json.loads(self.run("image", "inspect", ref).stdout)
        assert isinstance(info, dict)
        return info


#: ``make(workdir, registries_conf_text)``: a :class:`Podman` of its own.
PodmanFactory = Callable[[Path, str], Podman]


@contextlib.contextmanager
def podman_factory() -> Iterator[PodmanFactory]:
    """Makes podmans (the test fails if podman is missing), each with a short runroot in
    /tmp that is removed afterwards."""
    binary = require_tools("podman")["podman"]
    runroots: list[Path] = []

    def make(workdir: Path, registries: str) -> Podman:
        runroots.append(Path(tempfile.mkdtemp(prefix="podrun-", dir="/tmp")))
        return Podman(binary, workdir, runroots[-1], registries)

    try:
        yield make
    finally:
        for runroot in runroots:
            shutil.rmtree(runroot, ignore_errors=True)
