"""Resource safety of the serving path: every descriptor comes back, stalls are bounded,
running out of descriptors is a 503, not a hang, and downloads beyond the cap wait.

The real mirror process in front of a real upstream registry (Debian's docker-registry),
the fault proxy where a real registry cannot misbehave; the resource oracle reads the
mirror's descriptors, threads and memory from /proc.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import MirrorFactory
from tests.support.faulty import FaultyProxy
from tests.support.images import push_image
from tests.support.mirror import MirrorProcess, assert_log_quiet
from tests.support.oci import oci_error_codes
from tests.support.registry import RegistryProcess
from tests.support.resources import assert_returns_to_baseline, resources
from tests.support.store import blob_file, published
from tests.support.waits import wait_until

BIG = 24_000_000  # more than the socket buffers on both sides of a loopback connection


def _client(mirror: MirrorProcess, timeout: float = 30) -> httpx.Client:
    return httpx.Client(base_url=mirror.url, trust_env=False, timeout=timeout, verify=False)


def _connect(mirror: MirrorProcess, *, rcvbuf: int | None = None) -> socket.socket:
    """A raw connection to the mirror (TLS-wrapped under TLS)."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(20)
    raw.connect(("127.0.0.1", mirror.port))
    if not mirror.tls:
        return raw
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context.wrap_socket(raw)


def _read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, bool]:
    """Everything the mirror sends until it closes the connection (True) or ``limit``
    seconds pass without it closing (False)."""
    received = b""
    deadline = time.monotonic() + limit
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        except (ConnectionResetError, ssl.SSLEOFError):  # any other TLS error is a failure
            return received, True
        if not chunk:
            return received, True
        received += chunk
    return received, False


def _mirror_holds(mirror: MirrorProcess, client_port: int) -> bool:
    """Does the mirror process still have a descriptor of its end of the connection
    from ``client_port``?"""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if (
            int(local.split(":")[1], 16) == mirror.port
            and int(remote.split(":")[1], 16) == client_port
        ):
            inodes.add(f"socket:[{fields[9]}]")
    return bool(inodes & set(resources(mirror.pid).fd_targets))


# ---------------------------------------------------------------------- 416


def test_unsatisfiable_ranges_leave_no_descriptor_open(
    upstream: RegistryProcess, any_mirror: MirrorProcess
) -> None:
    image = push_image(upstream.url, "library/ranged", "1", layers=[50_000])
    digest = image.layer_digests[0]
    size = len(image.blobs[digest])
    path = f"/v2/library/ranged/blobs/{digest}"
    with _client(any_mirror) as client:
        assert client.get(path).content == image.blobs[digest]  # cached now
        baseline = resources(any_mirror.pid)
        for i in range(200):
            header = ("bytes=99999999999-", "bytes=-0", f"bytes={size}-")[i % 3]
            response = client.get(path, headers={"Range": header})
            assert response.status_code == 416, header
            assert response.headers["Content-Range"] == f"bytes */{size}"
        # An inverted range is ignored (the whole blob), a valid one still served.
        assert client.get(path, headers={"Range": "bytes=5-2"}).content == image.blobs[digest]
        part = client.get(path, headers={"Range": "bytes=10-19"})
        assert part.status_code == 206
        assert part.content == image.blobs[digest][10:20]
    assert_returns_to_baseline(any_mirror.pid, baseline)


# ---------------------------------------------------------------------- failures mid-body


def test_a_cached_file_that_ends_early_cuts_the_response(
    upstream: RegistryProcess, any_mirror: MirrorProcess
) -> None:
    """The store fails after the headers went out (here: the cached file is cut short
    while it is being sent): the client sees its connection cut, never a complete answer
    or a second response in the body, and nothing stays open in the mirror."""
    image = push_image(upstream.url, "library/damaged", "1", layers=[BIG])
    digest = image.layer_digests[0]
    path = f"/v2/library/damaged/blobs/{digest}"
    with _client(any_mirror) as client:
        assert client.get(path).content == image.blobs[digest]
    baseline = resources(any_mirror.pid)
    published(any_mirror.root, digest)  # made durable and renamed right after the answer
    cached = blob_file(any_mirror.root, digest)
    with _connect(any_mirror, rcvbuf=16384) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {any_mirror.host}\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        with cached.open("r+b") as f:
            f.truncate(1_000_000)
        rest, closed = _read_until_closed(sock, 15)
        received += rest
    assert closed, "the mirror kept the connection open after its file ended"
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert received.count(b"HTTP/1.1 ") == 1, "a second response was written into the body"
    body = received.partition(b"\r\n\r\n")[2]
    assert len(body) < BIG
    kept = min(len(body), 1_000_000)  # what lies past the cut is whatever the race gave
    assert body[:kept] == image.blobs[digest][:kept]
    assert_returns_to_baseline(any_mirror.pid, baseline)
    assert_log_quiet(any_mirror.log())


# ---------------------------------------------------------------------- stalled clients


@pytest.mark.parametrize("cached", [False, True], ids=["miss", "hit"])
def test_a_client_that_stops_reading_is_dropped_after_the_write_timeout(
    upstream: RegistryProcess, mirror_factory: MirrorFactory, cached: bool
) -> None:
    image = push_image(upstream.url, "library/stall", "1", layers=[BIG])
    digest = image.layer_digests[0]
    path = f"/v2/library/stall/blobs/{digest}"
    mirror = mirror_factory(upstream.url, args=["--http-write-timeout", "2s"])
    if cached:
        with _client(mirror) as client:
            assert client.get(path).content == image.blobs[digest]
    baseline = resources(mirror.pid)
    with _connect(mirror, rcvbuf=16384) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {mirror.host}\r\n\r\n".encode())
        # The client reads nothing and keeps its end open: the mirror lets go by itself.
        client_port = sock.getsockname()[1]
        wait_until(
            lambda: _mirror_holds(mirror, client_port),
            10,
            message="the mirror never took the connection",
        )
        wait_until(
            lambda: not _mirror_holds(mirror, client_port),
            30,
            interval=0.2,
            message="the mirror still holds the stalled connection",
        )
        assert_returns_to_baseline(mirror.pid, baseline)
        received, closed = _read_until_closed(sock, 20)
        assert closed
        assert len(received) < BIG
    # The blob is served (and cached) as usual for the next client.
    with _client(mirror) as client:
        assert client.get(path).content == image.blobs[digest]
    assert_log_quiet(mirror.log())


# ---------------------------------------------------------------------- descriptors


class LimitedMirror(MirrorProcess):
    """The mirror started under ``prlimit --nofile=SOFT:HARD``."""

    def __init__(self, *args: object, nofile: tuple[int, int], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.nofile = nofile

    def command(self) -> list[str]:
        soft, hard = self.nofile
        return ["prlimit", f"--nofile={soft}:{hard}", "--", *super().command()]


def _open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files limit in /proc")


@pytest.fixture
def limited(upstream: RegistryProcess, tmp_path: Path) -> Iterator[LimitedMirror]:
    mirror = LimitedMirror(
        tmp_path / "limited", upstream.url, nofile=(100, 100), args=["--log-level", "info"]
    )
    with mirror:
        yield mirror


def test_the_open_files_limit_is_raised_to_the_hard_limit(
    upstream: RegistryProcess, tmp_path: Path
) -> None:
    with LimitedMirror(tmp_path / "raised", upstream.url, nofile=(256, 4096)) as mirror:
        assert _open_files_limit(mirror.pid) == (4096, 4096)


def _request(sock: socket.socket, host: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """One keep-alive request on an open connection; status, headers, body."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    sock.settimeout(20)
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {received!r}")
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        body += chunk
    return status, headers, body


def test_out_of_descriptors_answers_503_and_recovers(
    upstream: RegistryProcess, limited: LimitedMirror
) -> None:
    image = push_image(upstream.url, "library/fds", "1", layers=[40_000, 30_000])
    digest, other = image.layer_digests
    path = f"/v2/library/fds/blobs/{digest}"
    assert _open_files_limit(limited.pid) == (100, 100)
    with contextlib.ExitStack() as stack:
        probe = stack.enter_context(socket.create_connection(("127.0.0.1", limited.port)))
        status, _, body = _request(probe, limited.host, path)
        assert (status, body) == (200, image.blobs[digest])
        published(limited.root, digest)  # its staging file closed
        baseline = resources(limited.pid)  # serving, before the flood
        # Idle connections until the mirror has no descriptor left.
        idle: list[socket.socket] = []

        def exhausted() -> bool:
            for _ in range(10):  # then a pause: let the mirror accept them
                if resources(limited.pid).fds >= 100:
                    return True
                address = ("127.0.0.1", limited.port)
                idle.append(stack.enter_context(socket.create_connection(address)))
            return False

        wait_until(exhausted, 30, message=lambda: f"stuck at {resources(limited.pid).describe()}")
        # A cache hit needs a descriptor for its file: 503 with Retry-After, at once.
        started = time.monotonic()
        status, headers, body = _request(probe, limited.host, path)
        assert status == 503, body
        assert int(headers["retry-after"]) > 0
        assert oci_error_codes(headers["content-type"], body) == ["UNAVAILABLE"]
        # A miss needs a staging file and an upstream connection (a pooled one may still
        # be there): served, or 503 with Retry-After, at once; never a 500 or a hang.
        status, headers, body = _request(probe, limited.host, f"/v2/library/fds/blobs/{other}")
        if status == 200:
            assert body == image.blobs[other]
        else:
            assert status == 503, body
            assert int(headers["retry-after"]) > 0
        assert time.monotonic() - started < 10
        for sock in idle:
            sock.close()

    # Serving again once the connections are gone.
    def served() -> httpx.Response | None:
        try:
            with _client(limited, timeout=5) as client:
                response = client.get(path)
        except httpx.TransportError:
            return None
        return response if response.status_code == 200 else None

    response = wait_until(served, 20, interval=0.2, message="the mirror did not recover")
    assert response.content == image.blobs[digest]
    assert_returns_to_baseline(limited.pid, baseline)  # every idle connection let go
    log = limited.log()
    assert_log_quiet(log)


# ---------------------------------------------------------------------- download cap


def test_downloads_beyond_the_cap_wait_for_a_slot(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    first = push_image(upstream.url, "library/capped", "1", layers=[2_000_000], seed=11)
    second = push_image(upstream.url, "library/capped2", "1", layers=[2_000_000], seed=12)
    with FaultyProxy(upstream.url) as proxy:
        gate = proxy.gate("GET", r"/blobs/sha256:", at_bytes=100_000, times=1)
        mirror = mirror_factory(proxy.url, args=["--limits-upstream-fetches", "1"])
        results: dict[str, int] = {}

        def get(name: str, digest: str) -> None:
            with _client(mirror, timeout=60) as client:
                results[name] = client.get(f"/v2/library/{name}/blobs/{digest}").status_code

        one = threading.Thread(target=get, args=("capped", first.layer_digests[0]))
        one.start()
        gate.wait_reached()
        two = threading.Thread(target=get, args=("capped2", second.layer_digests[0]))
        two.start()
        time.sleep(1.0)  # the second download has had time to reach upstream, were it let
        released = time.monotonic()
        gate.release()
        one.join(60)
        two.join(60)
        assert results == {"capped": 200, "capped2": 200}
        started = [r.time for r in proxy.requests("GET", rf"/blobs/{second.layer_digests[0]}")]
        assert started, "the second blob never reached upstream"
        assert min(started) >= released, "the cap of one download was not kept"
