"""containerd of the tests' own, driven with ``ctr``: a daemon with its root, state and
sockets in temporary directories, the plugins a pull does not need disabled, and registry
mirrors configured with ``hosts.toml`` (containerd's ``docs/hosts.md``)::

    with running_containerd(tmp_path / "containerd") as daemon:
        daemon.mirror_to(mirror.host)
        daemon.pull("docker.io/library/app:1")
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

from .clients import require_tools
from .service import Service

__all__ = ["DISABLED_PLUGINS", "Containerd", "processes_using", "running_containerd"]

# Plugins a pull does not need, and those that need privileges, hardware or other paths
# (``opt`` would create /opt/containerd).
DISABLED_PLUGINS = [
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.runtime.v1.linux",
    "io.containerd.runtime.v2.task",
    "io.containerd.monitor.v1.cgroups",
    "io.containerd.service.v1.tasks-service",
    "io.containerd.grpc.v1.tasks",
    "io.containerd.internal.v1.restart",
]


class Containerd(Service):
    """A containerd daemon of our own: data in ``workdir``, sockets in a short /tmp directory."""

    def __init__(self, containerd: str, ctr: str, workdir: Path) -> None:
        self.binary = containerd
        self.ctr_binary = ctr
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        # Unix socket paths are limited to ~108 bytes: pytest's tmp_path can be longer.
        self.sockdir = Path(tempfile.mkdtemp(prefix="ctrd-", dir="/tmp"))
        self.address = str(self.sockdir / "containerd.sock")
        self.config_path = workdir / "config.toml"
        self.log_path = workdir / "containerd.log"
        self.hosts_dir = workdir / "certs.d"
        self._proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        disabled = ", ".join(f'"{p}"' for p in DISABLED_PLUGINS)
        return (
            "version = 2\n"
            f'root = "{self.workdir / "root"}"\n'
            f'state = "{self.workdir / "state"}"\n'
            f'temp = "{self.workdir / "temp"}"\n'
            f"disabled_plugins = [{disabled}]\n"
            "[grpc]\n"
            f'  address = "{self.address}"\n'
            "[ttrpc]\n"
            f'  address = "{self.address}.ttrpc"\n'
        )

    def mirror_to(
        self, host: str, registry: str = "docker.io", *, tls: bool = False, server: str = ""
    ) -> Path:
        """Write ``certs.d/<registry>/hosts.toml`` making ``http://host`` its mirror
        (``https://host`` with ``tls``, its certificate not verified); ``server``, where
        containerd goes when the mirror fails, is Docker Hub's unless given."""
        path = self.hosts_dir / registry / "hosts.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f'server = "{server or "https://registry-1.docker.io"}"\n'
            "\n"
            f'[host."{"https" if tls else "http"}://{host}"]\n'
            '  capabilities = ["pull", "resolve"]\n' + ("  skip_verify = true\n" if tls else "")
        )
        return path

    def forget(self, ref: str) -> None:
        """Remove the image and (garbage collection) its content: the next pull fetches
        every blob again."""
        self.ctr("images", "rm", "--sync", ref)

    def start(self, timeout: float = 20.0) -> Self:
        (self.workdir / "temp").mkdir(exist_ok=True)
        self.config_path.write_text(self.config())
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"containerd exited with {self._proc.returncode}:\n{self.log()}")
            if os.path.exists(self.address):
                probe = subprocess.run(
                    [self.ctr_binary, "--address", self.address, "version"],
                    capture_output=True,
                    timeout=10,
                    check=False,
                )
                if probe.returncode == 0:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"containerd not answering after {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL; removes the socket directory.  Idempotent."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout)
            self._proc = None
        shutil.rmtree(self.sockdir, ignore_errors=True)

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def attempt(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``ctr`` against this daemon; the caller judges the result."""
        return subprocess.run(
            [self.ctr_binary, "--address", self.address, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def ctr(self, *args: str, timeout: float = 120) -> str:
        """Run ``ctr``, which must succeed; its output."""
        proc = self.attempt(*args, timeout=timeout)
        assert proc.returncode == 0, (
            f"ctr {' '.join(args)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr}"
            f"\ncontainerd log tail:\n{self.log()[-3000:]}"
        )
        return proc.stdout

    def pull_args(self, ref: str, *options: str) -> list[str]:
        """``ctr`` arguments of a pull through the mirrors of ``hosts_dir``.  The native
        snapshotter unpacks anywhere (overlayfs may be unavailable in CI)."""
        return [
            "images",
            "pull",
            "--snapshotter",
            "native",
            "--hosts-dir",
            str(self.hosts_dir),
            *options,
            ref,
        ]

    def pull(self, ref: str, *options: str) -> str:
        return self.ctr(*self.pull_args(ref, *options))

    def attempt_pull(
        self, ref: str, *options: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """A pull that may fail (refused credentials, say); the caller judges it."""
        return self.attempt(*self.pull_args(ref, *options), timeout=timeout)

    def images(self) -> dict[str, tuple[str, str]]:
        """``ctr images ls``: reference -> (media type, digest)."""
        out = {}
        for line in self.ctr("images", "ls").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3:
                out[fields[0]] = (fields[1], fields[2])
        return out

    def content(self) -> set[str]:
        """``ctr content ls``: the digests in containerd's content store (verified on commit)."""
        lines = self.ctr("content", "ls").splitlines()[1:]
        return {line.split()[0] for line in lines if line.startswith("sha256:")}


def processes_using(path: str) -> list[int]:
    """PIDs whose command line mentions ``path`` (to prove nothing was left running)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if path.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return pids


@contextlib.contextmanager
def running_containerd(workdir: Path) -> Iterator[Containerd]:
    """A started :class:`Containerd` in ``workdir`` (the test fails if containerd or ctr is
    missing); stopped afterwards, and checked to have left nothing running."""
    tools = require_tools("containerd", "ctr")
    daemon = Containerd(tools["containerd"], tools["ctr"], workdir)
    with daemon:
        yield daemon
    assert processes_using(str(daemon.config_path)) == [], "containerd left running"
