"""containerd (``ctr``) pulling ``docker.io/...`` through the mirror, configured with hosts.toml.

Configuration (containerd's ``docs/hosts.md``): a directory per registry holding a
``hosts.toml``, e.g. ``/etc/containerd/certs.d/docker.io/hosts.toml``::

    server = "https://registry-1.docker.io"

    [host."http://mirror.example:5000"]
      capabilities = ["pull", "resolve"]

``ctr`` is given the directory with ``--hosts-dir /etc/containerd/certs.d``; the CRI plugin
(Kubernetes) with::

    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "/etc/containerd/certs.d"

containerd then asks the mirror for ``/v2/library/alpine/manifests/3.20?ns=docker.io`` (the
``ns`` parameter names the registry the image belongs to) and falls back to the ``server`` when
the mirror fails.  The ``http://`` in the host name makes it plain HTTP; no ``--plain-http``.
Behind TLS the host is ``https://mirror.example:5000`` with ``ca = "/path/ca.pem"`` (or, as the
tests with a self-signed certificate do, ``skip_verify = true``).

The tests run their own containerd (root, state and sockets in temporary directories; the
plugins a pull does not need are disabled) with this config::

    version = 2
    root = "TMP/root"
    state = "TMP/state"
    disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt", ...]
    [grpc]
      address = "/tmp/ctrd-XXXX/containerd.sock"
    [ttrpc]
      address = "/tmp/ctrd-XXXX/containerd.sock.ttrpc"

What containerd 1.6.20 does when the connection carrying a layer drops mid-body: it sends the
same GET again, on another connection, with ``Range: bytes=<bytes it had>-``, appends the
``206`` answer to what it had, and the pull completes (the dropped-connection test checks this).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from tests.support.clients import DroppingProxy, mirror_access_lines, require_tools
from tests.support.images import push_image, push_index, referenced_blobs
from tests.support.mirror import MirrorProcess
from tests.support.registry import RegistryProcess

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


class Containerd:
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

    def mirror_to(self, host: str, registry: str = "docker.io", *, tls: bool = False) -> Path:
        """Write ``certs.d/<registry>/hosts.toml`` making ``http://host`` its mirror
        (``https://host`` with ``tls``, its certificate not verified)."""
        path = self.hosts_dir / registry / "hosts.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            'server = "https://registry-1.docker.io"\n'
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def ctr(self, *args: str, timeout: float = 120) -> str:
        proc = subprocess.run(
            [self.ctr_binary, "--address", self.address, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert proc.returncode == 0, (
            f"ctr {' '.join(args)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr}"
            f"\ncontainerd log tail:\n{self.log()[-3000:]}"
        )
        return proc.stdout

    def pull(self, ref: str, *options: str) -> str:
        # The native snapshotter unpacks anywhere (overlayfs may be unavailable in CI).
        return self.ctr(
            "images",
            "pull",
            "--snapshotter",
            "native",
            "--hosts-dir",
            str(self.hosts_dir),
            *options,
            ref,
        )

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


def _processes_using(path: str) -> list[int]:
    """PIDs whose command line mentions ``path`` (to prove nothing was left running)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if path.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return pids


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Containerd]:
    tools = require_tools("containerd", "ctr")
    daemon = Containerd(tools["containerd"], tools["ctr"], tmp_path / "containerd")
    with daemon:
        yield daemon
    assert _processes_using(str(daemon.config_path)) == [], "containerd left running"


def api_requests(mirror: MirrorProcess, repo: str) -> list[tuple[str, str]]:
    return [
        (method, target)
        for method, target in mirror_access_lines(mirror.log())
        if target.startswith(f"/v2/{repo}/")
    ]


def test_ctr_pull_uses_hosts_toml_mirror_with_ns_parameter(
    containerd: Containerd, upstream: RegistryProcess, any_mirror: MirrorProcess
) -> None:
    """Over plain HTTP and over the mirror's own TLS (``https://`` host, ``skip_verify``);
    a second pull after the image is removed is served from the mirror's cache."""
    mirror = any_mirror
    image = push_image(upstream.url, "library/ctrapp", "1.0", layers=[400_000, 90_000], seed=21)
    upstream.clear_log()
    containerd.mirror_to(mirror.host, tls=mirror.tls)

    out = containerd.pull("docker.io/library/ctrapp:1.0")

    assert "unpacking linux/amd64" in out
    media_type, digest = containerd.images()["docker.io/library/ctrapp:1.0"]
    assert digest == image.digest
    assert media_type == image.media_type
    assert set(image.blobs) <= set(containerd.content())
    for blob in image.blobs:
        assert upstream.count("GET", rf"/blobs/{blob}$") == 1, blob
    requests = api_requests(mirror, "library/ctrapp")
    assert requests, mirror.log()
    for method, target in requests:
        assert re.search(r"[?&]ns=docker\.io(&|$)", target), (method, target)
    paths = {(method, target.split("?")[0]) for method, target in requests}
    assert ("HEAD", "/v2/library/ctrapp/manifests/1.0") in paths
    for blob in image.blobs:
        assert ("GET", f"/v2/library/ctrapp/blobs/{blob}") in paths

    containerd.forget("docker.io/library/ctrapp:1.0")
    assert not set(image.layer_digests) & containerd.content()
    upstream.clear_log()
    containerd.pull("docker.io/library/ctrapp:1.0")
    assert set(image.blobs) <= set(containerd.content())  # verified by containerd on commit
    assert upstream.count("GET", r"/blobs/") == 0


def test_ctr_pull_multi_platform_index_for_arm64(
    containerd: Containerd, upstream: RegistryProcess, mirror: MirrorProcess
) -> None:
    index = push_index(
        upstream.url, "library/ctrmulti", "2", layers=[60_000, 70_000], media="docker", seed=22
    )
    arm = index.children["linux/arm64"]
    containerd.mirror_to(mirror.host)
    upstream.clear_log()

    containerd.pull("docker.io/library/ctrmulti:2", "--platform", "linux/arm64")

    media_type, digest = containerd.images()["docker.io/library/ctrmulti:2"]
    assert (media_type, digest) == (index.media_type, index.digest)
    for blob in referenced_blobs(arm.manifest):
        assert upstream.count("GET", rf"/blobs/{blob}$") == 1, blob
    amd = index.children["linux/amd64"]
    assert upstream.count("GET", rf"/manifests/{amd.digest}$") == 0


# --- a connection dropped in the middle of a layer ----------------------------------------

DROP_AFTER = 5 << 20  # body bytes of the 20 MiB layer passed on before the connection drops


def pull_with_dropped_layer_connection(
    containerd: Containerd, upstream: RegistryProcess, mirror: MirrorProcess, repo: str
) -> tuple[str, DroppingProxy, str]:
    """Pull an image with a 20 MiB layer through a proxy that cuts the first connection
    carrying that layer after ``DROP_AFTER`` body bytes.  Returns (layer digest, proxy, ctr
    output); the proxy is stopped already but keeps its records."""
    image = push_image(upstream.url, repo, "1", layers=[20 << 20], seed=23)
    (layer,) = image.layer_digests
    upstream.clear_log()
    with DroppingProxy(mirror.port) as proxy:
        proxy.drop_once(rf"/blobs/{layer}\b", after=DROP_AFTER)
        containerd.mirror_to(proxy.host)
        out = containerd.pull(f"docker.io/{repo}:1")
    assert containerd.images()[f"docker.io/{repo}:1"][1] == image.digest
    assert layer in containerd.content()
    return layer, proxy, out


def test_ctr_pull_resumes_a_layer_after_a_dropped_connection(
    containerd: Containerd, upstream: RegistryProcess, mirror: MirrorProcess
) -> None:
    layer, proxy, _ = pull_with_dropped_layer_connection(
        containerd, upstream, mirror, "library/ctrdrop"
    )

    asked = proxy.requests(rf"/blobs/{layer}")
    assert len(asked) == 2, asked
    first, retry = asked
    assert "range" not in first.headers
    assert retry.headers.get("range") == f"bytes={DROP_AFTER}-"
    assert retry.connection != first.connection
    # The mirror answered the resume with the rest of the layer, and fetched it once.
    statuses = re.findall(
        rf'"GET /v2/library/ctrdrop/blobs/{layer}\S* HTTP/1.1" (\d+) ', mirror.log()
    )
    assert statuses[-1] == "206", mirror.log()
    assert upstream.count("GET", rf"/blobs/{layer}$") == 1


def test_ctr_dropped_connection_is_not_logged_as_a_mirror_error(
    containerd: Containerd, upstream: RegistryProcess, mirror: MirrorProcess
) -> None:
    """A client going away mid-download is routine: no 500, no traceback in the mirror's log."""
    layer, _, _ = pull_with_dropped_layer_connection(
        containerd, upstream, mirror, "library/ctrquiet"
    )

    log = mirror.log()
    statuses = re.findall(rf'"GET /v2/library/ctrquiet/blobs/{layer}\S* HTTP/1.1" (\d+) ', log)
    assert "500" not in statuses, log
    assert "Traceback" not in log, log
    assert "internal error" not in log, log
