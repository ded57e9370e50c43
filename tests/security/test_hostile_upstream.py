"""A hostile upstream: malformed, lying, oversized, looping and redirecting answers.

A real upstream registry, a :class:`FaultyProxy` in front of it (the mirror's upstream),
and the real mirror. Whatever the upstream does, the client gets a clear OCI error (502 for
nonsense, 401/429 passed on sanely), never a 500; the mirror logs no traceback, caches
nothing of the bad content, follows no redirect to a non-HTTP URL or (by default) to a
loopback/private address, and stays alive.

Most cases share one module-scoped stack (distinct repositories per test keep them apart);
cases that need their own mirror (other flags, a raw upstream) start one.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import MirrorFactory
from tests.support.faulty import FaultyProxy
from tests.support.images import (
    MANIFEST_ACCEPT,
    OCI_INDEX,
    OCI_MANIFEST,
    PushedImage,
    push_image,
    sha256_digest,
)
from tests.support.mirror import MirrorProcess, assert_log_quiet
from tests.support.oci import error_code, error_detail
from tests.support.registry import RegistryProcess
from tests.support.resources import LAZY_THREADS, Resources, assert_returns_to_baseline, resources
from tests.support.store import blob_file, published, staged_files
from tests.support.waits import wait_until

MiB = 1 << 20
BLOB = r"/blobs/sha256:[0-9a-f]{64}$"
MANIFEST = r"/manifests/"
ACCEPT = {"Accept": MANIFEST_ACCEPT}


# ---------------------------------------------------------------------- a raw TCP server

Responder = Callable[[str, str, dict[str, str]], Iterable[bytes]]


def _ok(method: str, path: str, headers: dict[str, str]) -> Iterable[bytes]:
    yield b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class RawServer:
    """A bare HTTP/1.1 server on 127.0.0.1 for what aiohttp would not send (bad framing,
    endless bodies), and a recorder of connections (for targets nobody may reach).

    Every connection is counted; each one's request head is parsed and answered with the
    bytes ``respond(method, path, headers)`` yields, then the connection is closed.
    """

    def __init__(self, respond: Responder = _ok) -> None:
        self.respond = respond
        self.connections = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.sent = 0  # bytes written to clients
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="raw-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def clear(self) -> None:
        with self._lock:
            self.connections = 0
            self.requests.clear()
            self.sent = 0

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            head = b""
            try:
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    head += chunk
            except OSError:
                return
            lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            method, path = ([*lines[0].split(" "), "", ""])[:2]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            with self._lock:
                self.requests.append((method, path, headers))
            try:
                for data in self.respond(method, path, headers):
                    conn.sendall(data)
                    with self._lock:
                        self.sent += len(data)
            except OSError:
                pass  # the mirror hung up: that is what the bounded cases expect


# ---------------------------------------------------------------------- the shared stack


@dataclass
class Stack:
    upstream: RegistryProcess
    proxy: FaultyProxy
    mirror: MirrorProcess
    listener: RawServer  # a target that must never be contacted
    client: httpx.Client
    baseline: Resources  # the mirror's, fresh
    log_offset: int = 0


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("hostile-upstream")
    with (
        RegistryProcess(base / "upstream") as upstream,
        FaultyProxy(upstream.url) as proxy,
        RawServer() as listener,
        MirrorProcess(base / "mirror", proxy.url) as mirror,
        httpx.Client(base_url=mirror.url, timeout=30, trust_env=False) as client,
    ):
        yield Stack(upstream, proxy, mirror, listener, client, baseline=resources(mirror.pid))


@pytest.fixture
def stack(shared: Stack) -> Iterator[Stack]:
    """The shared stack, reset: no faults, empty request logs, the mirror's log read from
    here on."""
    shared.proxy.clear_faults()
    shared.proxy.clear_log()
    shared.listener.clear()
    shared.log_offset = shared.mirror.log_size()
    yield shared
    shared.proxy.clear_faults()
    # Whatever the upstream sent, the mirror holds no more than before it all began.
    assert_returns_to_baseline(
        shared.mirror.pid, shared.baseline, fd_slack=6, thread_slack=LAZY_THREADS, timeout=30
    )


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A repository of its own for every test (and parameter): nothing cached by one test
    can answer for another."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:80].strip("-")
    return f"library/{name}"


# ---------------------------------------------------------------------- helpers


def assert_healthy(mirror: MirrorProcess, log_offset: int = 0) -> None:
    """Alive and answering, nothing left in staging, and a quiet log (since the offset)."""
    with httpx.Client(base_url=mirror.url, timeout=10, trust_env=False) as client:
        assert client.get("/v2/").status_code == 200
    wait_until(
        lambda: staged_files(mirror.root) == [],
        interval=0.02,
        message=lambda: staged_files(mirror.root),
    )
    assert_log_quiet(mirror.log(since=log_offset))


def assert_not_cached(stack: Stack, repo: str, *digests: str) -> None:
    """None of ``digests`` is in the store, and the repository is not in the catalog."""
    for digest in digests:
        assert not blob_file(stack.mirror.root, digest).exists(), digest
    catalog = stack.client.get("/v2/_catalog", params={"n": 10000}).json()["repositories"]
    assert repo not in catalog


def push(upstream: RegistryProcess, repo: str, tag: str = "latest", seed: int = 0) -> PushedImage:
    """An image of the repository's own (blobs and manifest unique to the repository)."""
    unique = zlib.crc32(repo.encode()) + seed
    return push_image(upstream.url, repo, tag, layers=[1000], seed=unique)


def manifest_fault_headers(body: bytes, media_type: str = OCI_MANIFEST) -> dict[str, str]:
    """What a registry sends with a manifest: the right type and the body's own digest."""
    return {"Content-Type": media_type, "Docker-Content-Digest": sha256_digest(body)}


# ---------------------------------------------------------------------- manifests

_CONFIG = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(b"{}")}
MALFORMED_MANIFESTS: dict[str, bytes] = {
    "truncated JSON": b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'", "la',
    "not UTF-8": b'{"schemaVersion": 2, "mediaType": "\xff\xfe\xc3("}',
    "empty body": b"",
    "a JSON array": b"[1, 2, 3]",
    "a JSON string": b'"manifest"',
    "layers not a list": json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": _CONFIG, "layers": "all"}
    ).encode(),
    "layer digest a path": json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _CONFIG,
            "layers": [{"digest": "sha256:../../../etc/passwd", "size": 1}],
        }
    ).encode(),
    "config digest a number": json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"digest": 5}, "layers": []}
    ).encode(),
    "deeply nested arrays": b"[" * 100_000 + b"]" * 100_000,
    "deeply nested objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
}


@pytest.mark.parametrize("body", MALFORMED_MANIFESTS.values(), ids=MALFORMED_MANIFESTS.keys())
def test_malformed_manifest_is_a_502_and_not_cached(stack: Stack, repo: str, body: bytes) -> None:
    """A manifest that is not the JSON its type promises, with the right digest header and
    content type: by digest and by tag, the client gets a 502; nothing is kept."""
    image = push(stack.upstream, repo)
    digest = sha256_digest(body)
    fault = stack.proxy.status(
        ("HEAD", "GET"), MANIFEST, 200, headers=manifest_fault_headers(body), body=body
    )
    for reference in (digest, "latest"):
        r = stack.client.get(f"/v2/{repo}/manifests/{reference}", headers=ACCEPT)
        assert r.status_code == 502, (reference, r.status_code, r.text[:300])
        assert error_code(r) == "UNKNOWN"
    assert_not_cached(stack, repo, digest)
    assert_healthy(stack.mirror, stack.log_offset)

    # Nothing of it was kept: the real manifest is served once the upstream is sane again.
    stack.proxy.remove(fault)
    r = stack.client.get(f"/v2/{repo}/manifests/latest", headers=ACCEPT)
    assert r.status_code == 200
    assert r.content == image.manifest
    r = stack.client.get(f"/v2/{repo}/manifests/{digest}", headers=ACCEPT)
    assert r.status_code == 404
    assert error_code(r) == "MANIFEST_UNKNOWN"


def test_manifest_not_matching_the_digest_asked_for(stack: Stack, repo: str) -> None:
    """The upstream answers a digest with bytes that hash to something else: a flipped
    byte, and another (self-consistent) manifest. 502, and neither is cached."""
    image = push(stack.upstream, repo)
    other = push(stack.upstream, repo, "other", seed=1)

    corrupt = stack.proxy.corrupt("GET", MANIFEST)
    for reference in (image.digest, "latest"):
        r = stack.client.get(f"/v2/{repo}/manifests/{reference}", headers=ACCEPT)
        assert r.status_code == 502, (reference, r.status_code, r.text[:300])
        assert error_code(r) == "UNKNOWN"
    stack.proxy.remove(corrupt)

    swapped = stack.proxy.status(
        "GET",
        f"/manifests/{image.digest}$",
        200,
        headers=manifest_fault_headers(other.manifest),
        body=other.manifest,
    )
    r = stack.client.get(f"/v2/{repo}/manifests/{image.digest}", headers=ACCEPT)
    assert r.status_code == 502, (r.status_code, r.text[:300])
    assert error_code(r) == "UNKNOWN"
    assert swapped.hits == 1
    assert_not_cached(stack, repo, image.digest, other.digest)
    assert_healthy(stack.mirror, stack.log_offset)

    stack.proxy.remove(swapped)
    r = stack.client.get(f"/v2/{repo}/manifests/{image.digest}", headers=ACCEPT)
    assert r.status_code == 200
    assert r.content == image.manifest


def test_oversized_manifest_is_a_502(stack: Stack, repo: str) -> None:
    """More than 4 MiB, announced by Content-Length: refused without a memory blow-up."""
    body = b'{"schemaVersion": 2, "pad": "' + b"x" * (5 * MiB) + b'"}'
    digest = sha256_digest(body)
    stack.proxy.status(
        ("HEAD", "GET"), MANIFEST, 200, headers=manifest_fault_headers(body), body=body
    )
    for reference in (digest, "latest"):
        r = stack.client.get(f"/v2/{repo}/manifests/{reference}", headers=ACCEPT)
        assert r.status_code == 502, (reference, r.status_code, r.text[:300])
        assert error_code(r) == "UNKNOWN"
    assert_not_cached(stack, repo, digest)
    assert_healthy(stack.mirror, stack.log_offset)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_endless_manifest_without_content_length_is_cut_off(
    mirror_factory: MirrorFactory,
) -> None:
    """A manifest streamed (chunked, no Content-Length) for 128 MiB: the mirror stops
    reading past 4 MiB, answers 502, and its memory does not grow by the stream's size."""
    total_chunks = 2048  # 64 KiB each: 128 MiB if it were all read
    chunk = b"x" * 65536

    def endless(method: str, path: str, headers: dict[str, str]) -> Iterator[bytes]:
        yield (
            b"HTTP/1.1 200 OK\r\nContent-Type: " + OCI_MANIFEST.encode() + b"\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        if method == "HEAD":
            return
        yield b"10000\r\n" + b'{"pad": "' + chunk[9:] + b"\r\n"
        for _ in range(total_chunks - 1):
            yield b"10000\r\n" + chunk + b"\r\n"
        yield b"0\r\n\r\n"

    with RawServer(endless) as raw:
        mirror = mirror_factory(raw.url, name="endless")
        before = _rss(mirror.pid)
        with httpx.Client(base_url=mirror.url, timeout=60, trust_env=False) as client:
            r = client.get(f"/v2/library/endless/manifests/{sha256_digest(b'x')}", headers=ACCEPT)
        assert r.status_code == 502, (r.status_code, r.text[:300])
        assert error_code(r) == "UNKNOWN"
        grown = _rss(mirror.pid) - before
        assert grown < 48 * MiB, f"the mirror grew by {grown / MiB:.0f} MiB"
        wait_until(
            lambda: raw.sent < total_chunks * len(chunk), interval=0.02, message=lambda: raw.sent
        )
    assert_healthy(mirror)


def test_index_with_20000_entries_is_a_clear_502(stack: Stack, repo: str) -> None:
    entries = [
        {
            "digest": sha256_digest(i.to_bytes(4, "big")),
            "platform": {"os": "linux", "architecture": "a"},
        }
        for i in range(20_000)
    ]
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    assert len(body) < 4 * MiB  # within the size limit: the entry count is the problem
    digest = sha256_digest(body)
    stack.proxy.status(
        ("HEAD", "GET"), MANIFEST, 200, headers=manifest_fault_headers(body, OCI_INDEX), body=body
    )
    for reference, accept in ((digest, ACCEPT), ("latest", ACCEPT), ("latest", {})):
        started = time.monotonic()
        r = stack.client.get(f"/v2/{repo}/manifests/{reference}", headers=accept)
        assert time.monotonic() - started < 10
        assert r.status_code == 502, (reference, r.status_code, r.text[:300])
        assert error_code(r) == "UNKNOWN"
        detail = error_detail(r)
        assert isinstance(detail, str) and detail, r.text  # says what was wrong
    assert_not_cached(stack, repo, digest)
    assert_healthy(stack.mirror, stack.log_offset)


#: What a manifest may be served as: the OCI and Docker manifest and index types (and the
#: schema1 and OCI artifact types a registry may still hold).
MANIFEST_MEDIA_TYPES = {
    OCI_MANIFEST,
    OCI_INDEX,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.oci.artifact.manifest.v1+json",
}
#: (Content-Type the upstream sends, mediaType the body declares or None)
FOREIGN_TYPES = {
    "text/html": ("text/html", None),
    "text/html with a charset": ("text/html; charset=utf-8", None),
    "svg": ("image/svg+xml", None),
    "javascript": ("application/javascript", None),
    "no content type, body says html": ("", "text/html"),
    "octet-stream, body says html": ("application/octet-stream", "text/html"),
}


@pytest.mark.parametrize("types", FOREIGN_TYPES.values(), ids=FOREIGN_TYPES.keys())
def test_manifest_is_never_served_as_a_foreign_media_type(
    stack: Stack, repo: str, types: tuple[str, str | None]
) -> None:
    """A "manifest" the upstream labels ``text/html`` (or that says so itself) must not be
    cached and served from the mirror's origin as a web page: refused (502), or served
    with a manifest media type."""
    content_type, declared = types
    doc: dict[str, object] = {"schemaVersion": 2, "note": "<script>alert(document.domain)</script>"}
    if declared is not None:
        doc["mediaType"] = declared
    body = json.dumps({**doc, "repo": repo}).encode()  # a digest of its own
    digest = sha256_digest(body)
    headers = {"Docker-Content-Digest": digest}
    if content_type:
        headers["Content-Type"] = content_type
    fault = stack.proxy.status("GET", MANIFEST, 200, headers=headers, body=body)
    r = stack.client.get(f"/v2/{repo}/manifests/{digest}", headers={"Accept": "*/*"})
    assert r.status_code in (200, 502), (r.status_code, r.text[:300])
    if r.status_code == 502:
        assert error_code(r) == "UNKNOWN"
    else:
        served = r.headers.get("Content-Type", "").split(";")[0].strip()
        assert served in MANIFEST_MEDIA_TYPES, f"served as {served!r}"
    stack.proxy.remove(fault)
    again = stack.client.get(f"/v2/{repo}/manifests/{digest}", headers={"Accept": "*/*"})
    if again.status_code == 200:  # from the cache: the upstream no longer has it
        served = again.headers.get("Content-Type", "").split(";")[0].strip()
        assert served in MANIFEST_MEDIA_TYPES, f"cached and served as {served!r}"
    assert_healthy(stack.mirror, stack.log_offset)


# ---------------------------------------------------------------------- blobs

WRONG_LENGTHS = {
    "announces more than it sends": (1000, 0),  # (Content-Length surplus, bytes withheld)
    "sends more than it announces": (-1000, 0),
    "announces and sends less": (-1000, 1000),
}


@pytest.mark.parametrize("lengths", WRONG_LENGTHS.values(), ids=WRONG_LENGTHS.keys())
def test_blob_with_a_wrong_content_length_is_never_served_whole_nor_cached(
    mirror_factory: MirrorFactory, lengths: tuple[int, int]
) -> None:
    surplus, withheld = lengths
    data = bytes(range(256)) * 1024  # 256 KiB
    digest = sha256_digest(data)

    def lying(method: str, path: str, headers: dict[str, str]) -> Iterator[bytes]:
        if not path.endswith(f"/blobs/{digest}"):
            yield b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            return
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(data) + surplus}\r\nConnection: close\r\n\r\n"
        )
        yield head.encode()
        if method != "HEAD":
            yield data[: len(data) - withheld]

    with RawServer(lying) as raw:
        mirror = mirror_factory(raw.url, name="lying")
        body = bytearray()
        aborted = None
        with (
            httpx.Client(base_url=mirror.url, timeout=30, trust_env=False) as client,
            client.stream("GET", f"/v2/library/lying/blobs/{digest}") as r,
        ):
            status = r.status_code
            if status == 200:
                try:
                    for part in r.iter_raw():
                        body += part
                except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                    aborted = exc
            else:
                r.read()
                assert status == 502, (status, r.text[:300])
                assert error_code(r) == "UNKNOWN"
        if status == 200:
            assert aborted is not None, "a response with the wrong content was completed"
            assert len(body) < len(data) + max(surplus, 0)
        assert len(raw.requests) <= 4  # the first try and at most three resumes
    assert not blob_file(mirror.root, digest).exists()
    assert_healthy(mirror)


# ---------------------------------------------------------------------- 401 challenges

#: ``WWW-Authenticate`` values no client should act on. ``{at}`` is the listener, which
#: stands behind every address they name: nothing may connect to it.
BOGUS_CHALLENGES = {
    "garbage": "!!! ,,, === \\\\ ;;",
    "empty": "",
    "unsupported scheme": "Negotiate YIIFyQYGKwYBBQUCoIIFvTCCBbmgMDAu",
    "realm a local file": 'Bearer realm="file:///etc/passwd",service="registry"',
    "realm an ftp URL": 'Bearer realm="ftp://{at}/token",service="registry"',
    "realm a gopher URL": 'Bearer realm="gopher://{at}/_GET%20/",service="registry"',
    "realm unparsable": 'Bearer realm="http://[",service="registry"',
    "realm without a host": 'Bearer realm="http://",service="registry"',
    "bearer without a realm": 'Bearer service="registry",scope="x"',
    "basic without credentials": 'Basic realm="registry"',
    "huge": 'Bearer realm="http://{at}/token",service="' + "s" * 6000 + '"',
    "larger than a header may be": 'Bearer realm="http://{at}/t",x="' + "s" * 20_000 + '"',
}


@pytest.mark.parametrize("challenge", BOGUS_CHALLENGES.values(), ids=BOGUS_CHALLENGES.keys())
def test_bogus_challenge_is_a_403_or_502(stack: Stack, repo: str, challenge: str) -> None:
    image = push(stack.upstream, repo)
    value = challenge.replace("{at}", f"127.0.0.1:{stack.listener.port}")
    stack.proxy.status(None, r"^/v2/", 401, headers={"WWW-Authenticate": value})
    for path in (f"/v2/{repo}/manifests/latest", f"/v2/{repo}/blobs/{image.layer_digests[0]}"):
        r = stack.client.get(path, headers=ACCEPT)
        assert r.status_code in (403, 502), (path, r.status_code, r.text[:300])
        assert error_code(r) == ("DENIED" if r.status_code == 403 else "UNKNOWN")
        assert "root:" not in r.text
    assert stack.listener.connections == 0, stack.listener.requests
    assert_not_cached(stack, repo, image.digest, *image.blobs)
    assert_healthy(stack.mirror, stack.log_offset)


#: Token service answers to an anonymous token request (the realm is a raw server).
BAD_TOKENS = {
    "not JSON": b"<html>login</html>",
    "a JSON array": b"[1, 2]",
    "no token": b'{"expires_in": 60}',
    "token not a string": b'{"token": {"a": 1}}',
    "token with CR LF": json.dumps({"token": "abc\r\nX-Injected: 1"}).encode(),
    "token with NUL": json.dumps({"token": "abc\u0000def"}).encode(),
    "token not Latin-1": json.dumps({"token": "t\u00e9\u4e2d"}).encode(),
    "expires_in a word": b'{"token": "abc", "expires_in": "soon"}',
    "expires_in negative": b'{"token": "abc", "expires_in": -100}',
    "expires_in infinite": b'{"token": "abc", "expires_in": 1e400}',
    "expires_in NaN": b'{"token": "abc", "expires_in": NaN}',
    "deeply nested": b'{"token": "abc", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "over 1 MiB": b'{"token": "' + b"t" * (2 * MiB) + b'"}',
}


@pytest.mark.parametrize("answer", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_hostile_token_service(
    upstream: RegistryProcess, mirror_factory: MirrorFactory, answer: bytes
) -> None:
    """The upstream wants a Bearer token (every request is refused with a 401); its token
    service answers nonsense. The client gets a 401 or a 502 within a few seconds, and the
    mirror asks the token service a bounded number of times. (A mirror of its own: a
    runaway loop must not outlive the test.)"""

    def token(method: str, path: str, headers: dict[str, str]) -> Iterator[bytes]:
        yield (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(answer)).encode() + b"\r\nConnection: close\r\n\r\n"
        )
        yield answer

    image = push_image(upstream.url, "library/tokens", "latest", layers=[1000])
    with FaultyProxy(upstream.url) as proxy, RawServer(token) as service:
        challenge = f'Bearer realm="{service.url}/token",service="registry"'
        proxy.status(None, r"^/v2/", 401, headers={"WWW-Authenticate": challenge})
        mirror = mirror_factory(proxy.url, name="tokens")
        with httpx.Client(base_url=mirror.url, timeout=10, trust_env=False) as client:
            for path in (
                "/v2/library/tokens/manifests/latest",
                f"/v2/library/tokens/blobs/{image.layer_digests[0]}",
            ):
                try:
                    r = client.get(path, headers=ACCEPT)
                except httpx.TimeoutException:
                    pytest.fail(
                        f"no answer within 10 s for {path}: {len(service.requests)} token"
                        f" requests and {len(proxy.requests())} upstream requests so far"
                    )
                assert r.status_code in (403, 502), (path, r.status_code, r.text[:300])
                assert error_code(r) == ("DENIED" if r.status_code == 403 else "UNKNOWN")
        assert len(service.requests) <= 4, len(service.requests)
        assert len(proxy.requests()) <= 8, len(proxy.requests())
        assert_healthy(mirror)


# ---------------------------------------------------------------------- redirects


@pytest.mark.parametrize("target", ["{proxy}{path}", "{path}", "{path}?again=1"])
def test_redirect_loop_ends_in_a_502(stack: Stack, repo: str, target: str) -> None:
    """A blob that redirects to itself (absolute, relative, with a new query): a few
    hops, then 502; no endless loop, no retry storm."""
    image = push(stack.upstream, repo)
    digest = image.layer_digests[0]
    stack.proxy.redirect("GET", BLOB, target.replace("{proxy}", stack.proxy.url))
    started = time.monotonic()
    r = stack.client.get(f"/v2/{repo}/blobs/{digest}")
    assert time.monotonic() - started < 5
    assert r.status_code == 502, (r.status_code, r.text[:300])
    assert error_code(r) == "UNKNOWN"
    assert 1 <= stack.proxy.count("GET", BLOB) <= 6
    assert not blob_file(stack.mirror.root, digest).exists()
    assert_healthy(stack.mirror, stack.log_offset)


NON_HTTP_REDIRECTS = {
    "file": "file:///etc/passwd",
    "ftp": "ftp://{at}/blob",
    "gopher": "gopher://{at}/_GET%20/",
    "data": "data:application/octet-stream;base64,AAAA",
    "javascript": "javascript:alert(1)",
    "unparsable": "http://[::1",
}


@pytest.mark.parametrize("target", NON_HTTP_REDIRECTS.values(), ids=NON_HTTP_REDIRECTS.keys())
def test_redirect_to_a_non_http_url_is_a_502(stack: Stack, repo: str, target: str) -> None:
    image = push(stack.upstream, repo)
    digest = image.layer_digests[0]
    stack.proxy.redirect("GET", BLOB, target.replace("{at}", f"127.0.0.1:{stack.listener.port}"))
    r = stack.client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 502, (r.status_code, r.text[:300])
    assert error_code(r) == "UNKNOWN"
    assert "root:" not in r.text
    assert stack.listener.connections == 0, stack.listener.requests
    assert not blob_file(stack.mirror.root, digest).exists()
    assert_healthy(stack.mirror, stack.log_offset)


@pytest.mark.parametrize("location", [None, "", " "], ids=["absent", "empty", "blank"])
def test_redirect_without_a_location_is_a_502(
    stack: Stack, repo: str, location: str | None
) -> None:
    image = push(stack.upstream, repo)
    digest = image.layer_digests[0]
    headers = {} if location is None else {"Location": location}
    stack.proxy.status("GET", BLOB, 307, headers=headers)
    r = stack.client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 502, (r.status_code, r.text[:300])
    assert error_code(r) == "UNKNOWN"
    assert stack.proxy.count("GET", BLOB) == 1
    assert not blob_file(stack.mirror.root, digest).exists()
    assert_healthy(stack.mirror, stack.log_offset)


#: Loopback in all its spellings (the listener is there), then private, link-local and
#: other non-public addresses (nothing is there: a refusal is immediate, a try would hang).
PRIVATE_REDIRECTS = {
    "loopback": "http://127.0.0.1:{port}/x",
    "localhost": "http://localhost:{port}/x",
    "127.1": "http://127.1:{port}/x",
    "decimal": "http://2130706433:{port}/x",
    "hex": "http://0x7f000001:{port}/x",
    "IPv4-mapped IPv6": "http://[::ffff:127.0.0.1]:{port}/x",
    "0.0.0.0": "http://0.0.0.0:{port}/x",
    "scheme-relative": "//127.0.0.1:{port}/x",
    "https loopback": "https://127.0.0.1:{port}/x",
    "IPv6 loopback": "http://[::1]:{port}/x",
    "10/8": "http://10.0.0.1/x",
    "172.16/12": "http://172.16.0.1/x",
    "192.168/16": "http://192.168.0.1/x",
    "cloud metadata": "http://169.254.169.254/latest/meta-data/",
    "IPv6 link-local": "http://[fe80::1]/x",
    "IPv6 unique local": "http://[fc00::1]/x",
    "shared address space": "http://100.64.0.1/x",
}


@pytest.mark.parametrize("target", PRIVATE_REDIRECTS.values(), ids=PRIVATE_REDIRECTS.keys())
def test_redirect_to_a_private_address_is_refused(stack: Stack, repo: str, target: str) -> None:
    image = push(stack.upstream, repo)
    digest = image.layer_digests[0]
    stack.proxy.redirect("GET", BLOB, target.replace("{port}", str(stack.listener.port)))
    started = time.monotonic()
    r = stack.client.get(f"/v2/{repo}/blobs/{digest}")
    assert time.monotonic() - started < 5, "the mirror tried to connect"
    assert r.status_code == 502, (r.status_code, r.text[:300])
    assert error_code(r) == "UNKNOWN"
    assert stack.listener.connections == 0, stack.listener.requests
    assert not blob_file(stack.mirror.root, digest).exists()
    assert_healthy(stack.mirror, stack.log_offset)


def test_redirect_to_a_second_proxy_on_loopback(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    """Refused by default (the target sees no connection); followed, and the blob served
    and cached, with ``--proxy-allow-private-redirects true``."""
    image = push_image(upstream.url, "library/cdn", "latest", layers=[200_000])
    digest = image.layer_digests[0]
    with FaultyProxy(upstream.url) as proxy, FaultyProxy(upstream.url) as cdn:
        proxy.redirect("GET", BLOB, cdn.url + "{path}?sig=1")
        refusing = mirror_factory(proxy.url, name="refusing")
        allowing = mirror_factory(
            proxy.url, name="allowing", args=["--proxy-allow-private-redirects", "true"]
        )
        with httpx.Client(base_url=refusing.url, timeout=30, trust_env=False) as client:
            r = client.get(f"/v2/library/cdn/blobs/{digest}")
        assert r.status_code == 502, (r.status_code, r.text[:300])
        assert error_code(r) == "UNKNOWN"
        assert cdn.requests() == []
        assert not blob_file(refusing.root, digest).exists()

        with httpx.Client(base_url=allowing.url, timeout=30, trust_env=False) as client:
            r = client.get(f"/v2/library/cdn/blobs/{digest}")
        assert r.status_code == 200, (r.status_code, r.text[:300])
        assert r.content == image.blobs[digest]
        assert [(c.path, c.query, c.status) for c in cdn.requests("GET", BLOB)] == [
            (f"/v2/library/cdn/blobs/{digest}", "sig=1", 200)
        ]
        assert published(allowing.root, digest) == image.blobs[digest]
    assert_healthy(refusing)
    assert_healthy(allowing)


# ---------------------------------------------------------------------- tag lists

BAD_TAG_LISTS = {
    "not JSON": b"<html>tags</html>",
    "tags not a list": b'{"name": "x", "tags": "latest"}',
    "tags not strings": b'{"name": "x", "tags": [1, {"a": 2}, null]}',
    "deeply nested": b'{"tags": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("body", BAD_TAG_LISTS.values(), ids=BAD_TAG_LISTS.keys())
def test_malformed_tag_list_is_a_502(stack: Stack, repo: str, body: bytes) -> None:
    stack.proxy.status(
        "GET", r"/tags/list$", 200, headers={"Content-Type": "application/json"}, body=body
    )
    r = stack.client.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 502, (r.status_code, r.text[:300])
    assert error_code(r) == "UNKNOWN"
    assert_healthy(stack.mirror, stack.log_offset)


def test_tag_list_whose_next_page_is_itself_ends(stack: Stack, repo: str) -> None:
    """``Link: rel="next"`` pointing back at the same page: the mirror stops (bounded)
    and answers with the tags it saw, once each."""
    page = json.dumps({"name": repo, "tags": ["a", "b"]}).encode()
    link = f'</v2/{repo}/tags/list?n=2&last=a>; rel="next"'
    stack.proxy.status(
        "GET",
        r"/tags/list$",
        200,
        headers={"Content-Type": "application/json", "Link": link},
        body=page,
    )
    started = time.monotonic()
    r = stack.client.get(f"/v2/{repo}/tags/list")
    assert time.monotonic() - started < 10
    assert r.status_code == 200, (r.status_code, r.text[:300])
    assert r.json() == {"name": repo, "tags": ["a", "b"]}
    assert stack.proxy.count("GET", r"/tags/list$") <= 100
    assert_healthy(stack.mirror, stack.log_offset)


# ---------------------------------------------------------------------- 429


def _http_date(delta: timedelta) -> str:
    return format_datetime(datetime.now(UTC) + delta, usegmt=True)


#: Retry-After values, and whether the mirror must pass a (sane) value on.
RETRY_AFTERS = {
    "huge": ("99999999999999999999999999", True),
    "negative": ("-5", False),
    "date in an hour": (_http_date(timedelta(hours=1)), True),
    "date in the past": (_http_date(-timedelta(days=3)), True),
    "date in year 9999": ("Fri, 31 Dec 9999 23:59:59 GMT", True),
    "date garbage": ("Mon, 99 Foo 2026 99:99:99 GMT", False),
    "fraction": ("1.5", False),
    "hex": ("0x10", False),
    "exponent": ("1e9", False),
    "empty": ("", False),
    "padded": ("  7  ", True),
    "superscript two": ("\u00b2", False),
    "arabic-indic three": ("\u0663", False),
    "fullwidth one": ("\uff11", False),
}


@pytest.mark.parametrize("retry_after", RETRY_AFTERS.values(), ids=RETRY_AFTERS.keys())
def test_429_with_a_strange_retry_after(
    stack: Stack, repo: str, retry_after: tuple[str, bool]
) -> None:
    value, passed_on = retry_after
    image = push(stack.upstream, repo)
    stack.proxy.status(None, r"^/v2/.+", 429, headers={"Retry-After": value})
    for path in (f"/v2/{repo}/manifests/latest", f"/v2/{repo}/blobs/{image.layer_digests[0]}"):
        r = stack.client.get(path, headers=ACCEPT)
        assert r.status_code == 429, (path, r.status_code, r.text[:300])
        assert error_code(r) == "TOOMANYREQUESTS"
        sent = r.headers.get("Retry-After")
        if passed_on:
            assert sent is not None, path
        if sent is not None:
            assert re.fullmatch(r"[0-9]+", sent), sent
            assert 0 <= int(sent) <= 86400, sent
    assert_not_cached(stack, repo, image.digest, *image.blobs)
    assert_healthy(stack.mirror, stack.log_offset)
