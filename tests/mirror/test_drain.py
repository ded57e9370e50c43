"""SIGTERM while real clients download a large cold blob: the drain.

The real upstream registry sits behind the fault-injecting proxy, which holds the blob's
download after its first bytes (a gate), so the downloads are in flight when the signal
arrives. Every client either gets the whole blob, verified, or a cut connection — never
wrong bytes reported complete; nothing partial stays in the cache; the exit status is 0.
A HEAD-first client's request begun before the signal, logged in or not, is answered
and told ``Connection: close``.
"""

from __future__ import annotations

import base64
import hashlib
import signal
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import MirrorFactory
from tests.support.faulty import Fault, FaultyProxy
from tests.support.images import MANIFEST_ACCEPT, push_image
from tests.support.mirror import MirrorProcess, assert_log_quiet, mirror_command
from tests.support.registry import RegistryProcess, make_htpasswd_line
from tests.support.sockets import unread_bytes
from tests.support.store import blob_file, staged_files, stored_files
from tests.support.tls import tls_args
from tests.support.waits import wait_until

MiB = 1 << 20
BLOB = r"/blobs/sha256:[0-9a-f]{64}$"
CLIENTS = 8
SIZE = 24 * MiB
GATE_AT = 2 * MiB


@dataclass
class Download:
    """One client's download of the blob: what arrived, and how it ended."""

    received: int = 0
    status: int | None = None
    length: int | None = None
    digest: str | None = None  # of what arrived
    error: str | None = None  # the connection was cut
    started: threading.Event = field(default_factory=threading.Event)

    def run(self, url: str, path: str) -> None:
        hasher = hashlib.sha256()
        try:
            with (
                httpx.Client(base_url=url, verify=False, trust_env=False, timeout=60) as client,
                client.stream("GET", path) as response,
            ):
                self.status = response.status_code
                self.length = int(response.headers["Content-Length"])
                for chunk in response.iter_raw():
                    hasher.update(chunk)
                    self.received += len(chunk)
                    self.started.set()
        except httpx.HTTPError as exc:  # cut: a clean error, whatever arrived is not complete
            self.error = type(exc).__name__
        self.digest = f"sha256:{hasher.hexdigest()}"
        self.started.set()


@dataclass
class Held:
    """:data:`CLIENTS` clients downloading a large cold blob from the mirror, the one
    upstream download held at the gate after its first bytes."""

    mirror: MirrorProcess
    gate: Fault
    digest: str
    data: bytes
    downloads: list[Download]
    threads: list[threading.Thread]

    def join(self) -> None:
        for thread in self.threads:
            thread.join(60)


def held_downloads(
    upstream: RegistryProcess,
    proxy: FaultyProxy,
    mirror_factory: MirrorFactory,
    *,
    seed: int,
    args: list[str],
) -> Held:
    image = push_image(upstream.url, "library/big", "1", layers=[SIZE], seed=seed)
    digest = image.layer_digests[0]
    mirror = mirror_factory(proxy.url, args=args)
    gate = proxy.gate("GET", BLOB, at_bytes=GATE_AT)
    path = f"/v2/{image.repo}/blobs/{digest}"
    downloads = [Download() for _ in range(CLIENTS)]
    threads = [threading.Thread(target=d.run, args=(mirror.url, path)) for d in downloads]
    for thread in threads:
        thread.start()
    for download in downloads:
        assert download.started.wait(30), "a download never started"
    gate.wait_reached()
    return Held(mirror, gate, digest, image.blobs[digest], downloads, threads)


def begun_request(
    mirror: MirrorProcess, path: str, *, method: str = "GET", headers: str = ""
) -> socket.socket:
    """A kept-alive connection with a request begun (its headers not finished), the
    bytes read by the server, so the server holds a request it cannot answer yet.
    ``headers``: more header lines, each ending in CRLF."""
    raw = socket.create_connection(("127.0.0.1", mirror.port), timeout=30)
    conn: socket.socket = raw
    client_port = raw.getsockname()[1]
    if mirror.tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = context.wrap_socket(raw, server_hostname="127.0.0.1")
    # One whole request first: the connection is then established on the server's side
    # (TLS handshake done, its protocol made), so what comes next is read straight
    # into it.
    conn.sendall(b"GET /livez HTTP/1.1\r\nHost: mirror\r\n\r\n")
    answer = b""
    while not answer.endswith(b"\r\n\r\nok\n"):
        chunk = conn.recv(4096)
        assert chunk, "the connection closed before /livez was answered"
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer
    conn.sendall(f"{method} {path} HTTP/1.1\r\nHost: mirror\r\n{headers}".encode())
    wait_until(lambda: unread_bytes(mirror.port, client_port) == 0, message="bytes not read")
    return conn


def finish_request(conn: socket.socket) -> tuple[str, bytes]:
    """Send the end of the headers; the answer's head and body, read until the close."""
    conn.sendall(b"\r\n")
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    conn.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode(), body


def refused(mirror: MirrorProcess) -> bool:
    try:
        socket.create_connection(("127.0.0.1", mirror.port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def assert_nothing_partial(root: Path, digest: str, data: bytes) -> None:
    """After the exit: no staging file, and the blob either absent or whole; a fresh
    look by ``verify`` finds the cache sound."""
    assert staged_files(root) == []
    for path in stored_files(root):
        if path == blob_file(root, digest):
            assert path.read_bytes() == data
    report = mirror_command("verify", "--root", str(root), "--json")
    assert report.returncode == 0, report.stdout + report.stderr


@pytest.mark.parametrize("scheme", ["http", "tls"])
def test_sigterm_lets_downloads_in_flight_finish_and_refuses_new_connections(
    scheme: str,
    upstream: RegistryProcess,
    proxy: FaultyProxy,
    mirror_factory: MirrorFactory,
    tmp_path: Path,
) -> None:
    args = ["--http-draintimeout", "60s"]
    args += tls_args(tmp_path / "tls") if scheme == "tls" else []
    held = held_downloads(upstream, proxy, mirror_factory, seed=21, args=args)
    mirror, digest, data, downloads = held.mirror, held.digest, held.data, held.downloads
    assert proxy.count("GET", BLOB) == 1  # one upstream download for the eight clients
    probe = begun_request(mirror, "/readyz")
    mark = mirror.log_size()
    mirror.signal(signal.SIGTERM)
    wait_until(lambda: "draining: " in mirror.log(mark), message=mirror.log)

    assert refused(mirror), "a new connection during the drain must be refused"
    head, body = finish_request(probe)
    assert head.startswith("HTTP/1.1 503"), head
    assert "Connection: close" in head
    assert b"[-]draining failed: shutting down" in body
    assert all(d.error is None and d.received < len(data) for d in downloads)  # still under way

    held.gate.release()
    held.join()
    for download in downloads:
        assert download.status == 200
        assert download.length == len(data)
        assert download.error is None, download
        assert (download.received, download.digest) == (len(data), digest)
    assert mirror.wait_exit() == 0
    log = mirror.log(mark)
    assert f"draining: {CLIENTS + 1} connections with a request under way" in log
    assert f"drained: {CLIENTS + 1} requests finished" in log
    assert "connections cut" not in log and "cutting the drain short" not in log
    assert_log_quiet(log)
    # The download finished within the drain: committed, whole, indexed.
    assert blob_file(mirror.root, digest).read_bytes() == data
    assert_nothing_partial(mirror.root, digest, data)


def test_the_grace_period_over_cuts_what_is_left_and_keeps_nothing_partial(
    upstream: RegistryProcess, proxy: FaultyProxy, mirror_factory: MirrorFactory
) -> None:
    # The gate is never released before the exit.
    held = held_downloads(
        upstream, proxy, mirror_factory, seed=22, args=["--http-draintimeout", "1s"]
    )
    mirror, digest, data = held.mirror, held.digest, held.data
    mark = mirror.log_size()
    mirror.signal(signal.SIGTERM)
    assert mirror.wait_exit() == 0
    held.join()
    for download in held.downloads:
        assert download.status == 200
        assert download.error is not None, "a cut download must not end as complete"
        assert download.received < len(data)
    log = mirror.log(mark)
    assert (
        f"drain grace period of 1s over: 0 of {CLIENTS} requests finished,"
        f" {CLIENTS} connections cut, 1 upstream downloads discarded" in log
    ), log
    assert_log_quiet(log)
    assert not blob_file(mirror.root, digest).exists()
    assert_nothing_partial(mirror.root, digest, data)
    held.gate.release()


def test_a_second_signal_cuts_the_drain_short(
    upstream: RegistryProcess, proxy: FaultyProxy, mirror_factory: MirrorFactory
) -> None:
    held = held_downloads(
        upstream, proxy, mirror_factory, seed=23, args=["--http-draintimeout", "5m"]
    )
    mirror, digest, data = held.mirror, held.digest, held.data
    mark = mirror.log_size()
    mirror.signal(signal.SIGINT)
    wait_until(lambda: "draining: " in mirror.log(mark), message=mirror.log)
    time.sleep(1.2)  # a signal within a second of the first is taken as the same one
    mirror.signal(signal.SIGTERM)
    assert mirror.wait_exit() == 0  # long before the five minutes
    held.join()
    assert all(d.error is not None and d.received < len(data) for d in held.downloads)
    log = mirror.log(mark)
    assert "SIGINT: shutting down" in log
    assert "SIGTERM again: cutting the drain short" in log
    assert f"drain cut short: 0 of {CLIENTS} requests finished, {CLIENTS} connections cut" in log
    assert_log_quiet(log)
    assert_nothing_partial(mirror.root, digest, data)
    held.gate.release()


def test_head_first_clients_logged_in_or_not_get_their_answers_during_the_drain(
    upstream: RegistryProcess, mirror_factory: MirrorFactory, tmp_path: Path
) -> None:
    """A client asking HEAD of a manifest first (docker's pull does), through
    authentication, its request begun when SIGTERM arrives: the logged-in one gets the
    digest, the anonymous one its 401, each with ``Connection: close``."""
    image = push_image(upstream.url, "library/small", "1", layers=[1000], seed=24)
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(make_htpasswd_line("carol", "secret") + "\n")
    args = ["--auth-htpasswd-path", str(htpasswd), "--http-draintimeout", "10s"]
    mirror = mirror_factory(upstream.url, args=args)
    path = f"/v2/{image.repo}/manifests/{image.tag}"
    accept = f"Accept: {MANIFEST_ACCEPT}\r\n"
    login = base64.b64encode(b"carol:secret").decode()
    logged_in = begun_request(
        mirror, path, method="HEAD", headers=f"{accept}Authorization: Basic {login}\r\n"
    )
    anonymous = begun_request(mirror, path, method="HEAD", headers=accept)
    mark = mirror.log_size()
    mirror.signal(signal.SIGTERM)
    wait_until(lambda: "draining: " in mirror.log(mark), message=mirror.log)
    assert refused(mirror)

    head, body = finish_request(logged_in)
    assert head.startswith("HTTP/1.1 200"), head
    assert f"Docker-Content-Digest: {image.digest}" in head
    assert "Connection: close" in head, head
    assert body == b""
    head, body = finish_request(anonymous)
    assert head.startswith("HTTP/1.1 401"), head
    assert "WWW-Authenticate: Basic" in head
    assert "Connection: close" in head
    assert body == b""
    assert mirror.wait_exit() == 0
    log = mirror.log(mark)
    assert "draining: 2 connections with a request under way" in log
    assert "drained: 2 requests finished" in log
    assert_log_quiet(log)
