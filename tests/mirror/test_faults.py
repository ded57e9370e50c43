"""The mirror against a misbehaving upstream.

Every test runs the real upstream registry, a :class:`FaultyProxy` in front of it, and the real
mirror process whose ``--upstream`` is the proxy. Images are pushed straight to the upstream,
so the proxy only sees what the mirror asks.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import MirrorFactory
from tests.support.disks import fill_disk, mirror_on, tmpfs
from tests.support.faulty import Fault, FaultyProxy
from tests.support.images import MANIFEST_ACCEPT, push_image, sha256_digest
from tests.support.mirror import MirrorProcess, assert_log_quiet
from tests.support.oci import error_code, error_detail
from tests.support.registry import RegistryProcess
from tests.support.resources import LAZY_THREADS, assert_returns_to_baseline, resources
from tests.support.store import blob_file, published, staged_files, stored_files
from tests.support.tls import tls_args
from tests.support.waits import wait_until

MiB = 1 << 20
REPO = "library/alpine"
BLOB = r"/blobs/sha256:[0-9a-f]{64}$"
MANIFEST = r"/manifests/"
ACCEPT = {"Accept": MANIFEST_ACCEPT}
RATE_LIMIT_HEADERS = {
    "Retry-After": "42",
    "ratelimit-limit": "100;w=21600",
    "ratelimit-remaining": "0;w=21600",
}


@pytest.fixture
def mirror(proxy: FaultyProxy, mirror_factory: MirrorFactory) -> Iterator[MirrorProcess]:
    """The mirror with the faulty proxy as its upstream (overrides conftest's). After
    every fault its descriptors, threads and memory come back to where they started
    (pooled upstream connections may linger a little; lazily started pools stay)."""
    mirror = mirror_factory(proxy.url)
    baseline = resources(mirror.pid)
    yield mirror
    if mirror.running:
        assert_returns_to_baseline(
            mirror.pid, baseline, fd_slack=6, thread_slack=LAZY_THREADS, timeout=30
        )


# ---------------------------------------------------------------------- helpers


def blob_path(digest: str, repo: str = REPO) -> str:
    return f"/v2/{repo}/blobs/{digest}"


def one_layer(upstream: RegistryProcess, size: int, seed: int = 0) -> tuple[str, bytes]:
    """Push an image with one layer of about ``size`` bytes; its digest and content."""
    img = push_image(upstream.url, REPO, "latest", layers=[size], seed=seed)
    digest = img.layer_digests[0]
    return digest, img.blobs[digest]


@dataclass
class Fetched:
    status: int
    headers: httpx.Headers
    body: bytes
    error: Exception | None  # the transfer was cut before Content-Length was reached


def fetch(client: httpx.Client, path: str) -> Fetched:
    """GET, keeping whatever arrived if the response is aborted."""
    body = bytearray()
    with client.stream("GET", path) as response:
        try:
            for chunk in response.iter_raw():
                body += chunk
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            return Fetched(response.status_code, response.headers, bytes(body), exc)
    return Fetched(response.status_code, response.headers, bytes(body), None)


def read_at_least(chunks: Iterator[bytes], n: int, into: bytearray) -> None:
    """Read from a streaming response until ``into`` holds ``n`` bytes (the client's read
    timeout bounds each wait)."""
    while len(into) < n:
        into += next(chunks)


# ---------------------------------------------------------------------- blobs


def test_corrupted_blob_is_aborted_and_never_cached(
    upstream: RegistryProcess, proxy: FaultyProxy, mirror: MirrorProcess, client: httpx.Client
) -> None:
    digest, data = one_layer(upstream, MiB)
    proxy.corrupt("GET", BLOB)

    got = fetch(client, blob_path(digest))
    assert got.status == 200
    assert int(got.headers["Content-Length"]) == len(data)
    assert got.error is not None, "a corrupt blob must not be answered completely"
    assert len(got.body) < len(data)
    assert proxy.count("GET", BLOB) == 1  # no retry loop on a digest mismatch
    assert stored_files(mirror.root) == []
    assert staged_files(mirror.root) == []
    log = mirror.log()
    assert f"discarded {digest} from upstream" in log
    assert "hashed to sha256:" in log

    proxy.clear_faults()
    proxy.clear_log()
    got = fetch(client, blob_path(digest))
    assert got.error is None
    assert got.body == data
    assert proxy.count("GET", BLOB) == 1
    assert published(mirror.root, digest) == data
    assert staged_files(mirror.root) == []

    proxy.clear_log()
    assert client.get(blob_path(digest)).content == data
    assert proxy.requests() == []


def test_truncated_once_is_resumed_with_range(
    upstream: RegistryProcess, proxy: FaultyProxy, mirror: MirrorProcess, client: httpx.Client
) -> None:
    digest, data = one_layer(upstream, MiB)
    proxy.truncate("GET", BLOB, at_bytes=300_000, times=1)

    got = fetch(client, blob_path(digest))
    assert got.error is None
    assert got.body == data

    gets = proxy.requests("GET", BLOB)
    assert [g.headers.get("Range") for g in gets] == [None, "bytes=300000-"]
    assert [g.status for g in gets] == [200, 206]
    assert upstream.count("GET", BLOB) == 2
    assert published(mirror.root, digest) == data
    assert staged_files(mirror.root) == []
    assert f"resuming {digest} at 300000" in mirror.log()


def test_truncated_every_time_aborts_and_caches_nothing(
    upstream: RegistryProcess, proxy: FaultyProxy, mirror: MirrorProcess, client: httpx.Client
) -> None:
    digest, data = one_layer(upstream, MiB)
    fault = proxy.truncate("GET", BLOB, at_bytes=100_000)

    got = fetch(client, blob_path(digest))
    assert got.status == 200
    assert got.error is not None
    assert len(got.body) < len(data)
    assert got.body == data[: len(got.body)]  # what did arrive was the right bytes
    # Three attempts, each resuming where the previous one stopped.
    ranges = [g.headers.get("Range") for g in proxy.requests("GET", BLOB)]
    assert ranges == [None, "bytes=100000-", "bytes=200000-"]
    assert stored_files(mirror.root) == []
    assert staged_files(mirror.root) == []
    assert f"fill of {digest} failed" in mirror.log()

    proxy.remove(fault)
    proxy.clear_log()
    got = fetch(client, blob_path(digest))
    assert got.error is None
    assert got.body == data
    assert proxy.count("GET", BLOB) == 1
    assert published(mirror.root, digest) == data
    assert staged_files(mirror.root) == []


def test_bytes_stream_to_the_client_before_the_download_completes(
    upstream: RegistryProcess, proxy: FaultyProxy, mirror: MirrorProcess
) -> None:
    digest, data = one_layer(upstream, 4 * MiB)
    gate = proxy.gate("GET", BLOB, at_bytes=MiB)

    with (
        httpx.Client(base_url=mirror.url, timeout=5, trust_env=False) as c,
        c.stream("GET", blob_path(digest)) as response,
    ):
        assert response.status_code == 200
        assert int(response.headers["Content-Length"]) == len(data)
        chunks = response.iter_raw()
        received = bytearray()
        read_at_least(chunks, MiB, received)  # ReadTimeout here: the mirror buffers
        assert not gate.released.is_set()
        assert bytes(received) == data[:MiB]  # exactly what passed the gate, no more
        assert not blob_file(mirror.root, digest).exists()
        gate.release()
        for chunk in chunks:
            received += chunk
    assert bytes(received) == data
    assert published(mirror.root, digest) == data
    assert proxy.count("GET", BLOB) == 1


@pytest.fixture(params=["http", "tls"])
def any_faulty_mirror(
    request: pytest.FixtureRequest,
    proxy: FaultyProxy,
    mirror_factory: MirrorFactory,
    tmp_path: Path,
) -> Iterator[MirrorProcess]:
    """As ``mirror``, over plain HTTP, then over its own TLS."""
    args = tls_args(tmp_path / "tls") if request.param == "tls" else []
    mirror = mirror_factory(proxy.url, args=args)
    baseline = resources(mirror.pid)
    yield mirror
    if mirror.running:
        assert_returns_to_baseline(
            mirror.pid, baseline, fd_slack=6, thread_slack=LAZY_THREADS, timeout=30
        )


def test_a_range_deep_in_a_cold_layer_is_answered_while_the_fill_is_held(
    upstream: RegistryProcess, proxy: FaultyProxy, any_faulty_mirror: MirrorProcess
) -> None:
    """A lazy-pulling client reads a few KiB near the end of a layer being filled: the
    mirror asks the real upstream for that range by itself (the download is held at
    1 MiB), answers it, and the download still completes and is cached once."""
    mirror = any_faulty_mirror
    digest, data = one_layer(upstream, 12 * MiB)
    gate = proxy.gate("GET", BLOB, at_bytes=MiB, times=1)
    at = 11 * MiB
    with (
        httpx.Client(base_url=mirror.url, timeout=10, trust_env=False, verify=False) as c,
        c.stream("GET", blob_path(digest)) as whole,
    ):
        chunks = whole.iter_raw()
        received = bytearray()
        read_at_least(chunks, MiB // 2, received)
        ranged = c.get(blob_path(digest), headers={"Range": f"bytes={at}-{at + 8191}"})
        assert ranged.status_code == 206
        assert ranged.headers["Content-Range"] == f"bytes {at}-{at + 8191}/{len(data)}"
        assert ranged.content == data[at : at + 8192]
        assert not gate.released.is_set()
        gate.release()
        for chunk in chunks:
            received += chunk
    assert bytes(received) == data
    assert [r.headers.get("Range") for r in proxy.requests("GET", BLOB)] == [
        None,
        f"bytes={at}-{at + 8191}",
    ]
    assert published(mirror.root, digest) == data


def test_follower_joins_a_fill_in_progress(
    upstream: RegistryProcess, proxy: FaultyProxy, any_faulty_mirror: MirrorProcess
) -> None:
    """B joins when the download is 3 MiB in (held there): it gets what is in the
    staging file (by sendfile on plain TCP, read and streamed under TLS), then what is
    still only in memory, then follows the download with A."""
    mirror = any_faulty_mirror
    digest, data = one_layer(upstream, 4 * MiB)
    gate = proxy.gate("GET", BLOB, at_bytes=3 * MiB)

    with (
        httpx.Client(base_url=mirror.url, timeout=5, trust_env=False, verify=False) as ca,
        httpx.Client(base_url=mirror.url, timeout=5, trust_env=False, verify=False) as cb,
        ca.stream("GET", blob_path(digest)) as ra,
    ):
        chunks_a, got_a = ra.iter_raw(), bytearray()
        read_at_least(chunks_a, 1, got_a)
        gate.wait_reached()
        wait_until(lambda: sum(f.stat().st_size for f in staged_files(mirror.root)) >= 2 * MiB)
        with cb.stream("GET", blob_path(digest)) as rb:
            assert rb.status_code == 200
            chunks_b, got_b = rb.iter_raw(), bytearray()
            # B starts from byte 0 of the staged file while the download is held.
            read_at_least(chunks_b, 3 * MiB, got_b)
            assert not gate.released.is_set()
            assert bytes(got_b) == data[: 3 * MiB]
            gate.release()
            for chunk in chunks_a:
                got_a += chunk
            for chunk in chunks_b:
                got_b += chunk
    assert bytes(got_a) == data
    assert bytes(got_b) == data
    assert proxy.count("GET", BLOB) == 1
    assert upstream.count("GET", BLOB) == 1
    assert published(mirror.root, digest) == data


def test_fill_survives_its_first_client_leaving(
    upstream: RegistryProcess, proxy: FaultyProxy, mirror: MirrorProcess, client: httpx.Client
) -> None:
    digest, data = one_layer(upstream, 4 * MiB)
    gate = proxy.gate("GET", BLOB, at_bytes=MiB)
    with (
        httpx.Client(base_url=mirror.url, timeout=5, trust_env=False) as c,
        c.stream("GET", blob_path(digest)) as response,
    ):
        read_at_least(response.iter_raw(), 1, bytearray())
    # The client hung up; the download goes on without it.
    gate.release()
    wait_until(
        lambda: f"cached {digest}" in mirror.log(),
        interval=0.02,
        message="the fill died with its client",
    )
    assert published(mirror.root, digest) == data
    proxy.clear_log()
    assert client.get(blob_path(digest)).content == data
    assert proxy.requests() == []


def test_get_between_commit_and_end_of_fill_is_served(
    upstream: RegistryProcess, proxy: FaultyProxy, mirror: MirrorProcess
) -> None:
    """A GET that arrives once the blob file is committed, but before its fill has finished
    (here the fill's index write is held up by a lock on the mirror's SQLite index, as a busy
    disk would), must get the blob like any other."""
    digest, data = one_layer(upstream, MiB)
    index_db = mirror.root / "index.db"
    assert index_db.is_file()

    def get(_: int) -> Fetched:
        with httpx.Client(base_url=mirror.url, timeout=30, trust_env=False) as c:
            return fetch(c, blob_path(digest))

    lock = sqlite3.connect(index_db, isolation_level=None, timeout=5)
    try:
        lock.execute("BEGIN IMMEDIATE")  # the mirror's index writes now wait (busy_timeout)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(get, 1)
            wait_until(
                blob_file(mirror.root, digest).exists,
                interval=0.02,
                message="the blob was never committed",
            )
            second = pool.submit(get, 2)
            time.sleep(0.5)
            lock.execute("ROLLBACK")
            results = [first.result(), second.result()]
    finally:
        lock.close()
    assert [(f.status, f.error) for f in results] == [(200, None), (200, None)]
    assert [f.body == data for f in results] == [True, True]
    assert proxy.count("GET", BLOB) == 1


def test_concurrent_cold_gets_share_one_download(
    upstream: RegistryProcess, proxy: FaultyProxy, mirror: MirrorProcess
) -> None:
    digest, data = one_layer(upstream, 8 * MiB)
    proxy.delay("GET", BLOB, 1.0, times=1)
    clients = 16
    barrier = threading.Barrier(clients)

    def get(_: int) -> tuple[int, int, str]:
        with httpx.Client(base_url=mirror.url, timeout=30, trust_env=False) as c:
            barrier.wait(10)
            r = c.get(blob_path(digest))
            return r.status_code, len(r.content), sha256_digest(r.content)

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(get, range(clients)))
    assert results == [(200, len(data), digest)] * clients
    assert proxy.count("GET", BLOB) == 1
    assert upstream.count("GET", BLOB) == 1
    assert published(mirror.root, digest) == data


REFUSALS = {
    "503": (503, {}, "UNAVAILABLE"),
    "429": (429, RATE_LIMIT_HEADERS, "TOOMANYREQUESTS"),
}


@pytest.mark.parametrize("refusal", REFUSALS.values(), ids=REFUSALS.keys())
def test_blob_get_when_upstream_refuses(
    refusal: tuple[int, dict[str, str], str],
    upstream: RegistryProcess,
    proxy: FaultyProxy,
    mirror: MirrorProcess,
    client: httpx.Client,
) -> None:
    code, headers, expected_code = refusal
    digest, data = one_layer(upstream, MiB)
    fault = proxy.status("GET", BLOB, code, headers=headers)
    r = client.get(blob_path(digest))
    assert r.status_code == code
    assert error_code(r) == expected_code
    assert r.headers.get("Retry-After") == headers.get("Retry-After")
    assert proxy.count("GET", BLOB) == 1  # a refusal before any byte is not retried
    assert stored_files(mirror.root) == []
    assert staged_files(mirror.root) == []

    proxy.remove(fault)
    assert client.get(blob_path(digest)).content == data
    assert published(mirror.root, digest) == data


def test_resume_survives_a_failed_resume_attempt(
    upstream: RegistryProcess, proxy: FaultyProxy, mirror: MirrorProcess, client: httpx.Client
) -> None:
    digest, data = one_layer(upstream, MiB)
    proxy.truncate("GET", BLOB, at_bytes=200_000, times=1)
    proxy.status("GET", BLOB, 503, times=1)  # the first resume is refused
    got = fetch(client, blob_path(digest))
    assert got.error is None
    assert got.body == data
    gets = proxy.requests("GET", BLOB)
    assert [(g.headers.get("Range"), g.status) for g in gets] == [
        (None, 200),
        ("bytes=200000-", 503),
        ("bytes=200000-", 206),
    ]
    assert published(mirror.root, digest) == data


def test_stalled_upstream_is_resumed_after_the_read_timeout(
    upstream: RegistryProcess, proxy: FaultyProxy, mirror_factory: MirrorFactory
) -> None:
    mirror = mirror_factory(proxy.url, args=["--proxy-read-timeout", "1s"])
    digest, data = one_layer(upstream, 2 * MiB)
    gate = proxy.gate("GET", BLOB, at_bytes=MiB, times=1)  # never released in time
    with httpx.Client(base_url=mirror.url, timeout=30, trust_env=False) as client:
        got = fetch(client, blob_path(digest))
    gate.release()
    assert got.error is None
    assert got.body == data
    assert [g.headers.get("Range") for g in proxy.requests("GET", BLOB)] == [
        None,
        f"bytes={MiB}-",
    ]
    assert published(mirror.root, digest) == data


def test_head_of_uncached_blob_asks_upstream_and_downloads_nothing(
    upstream: RegistryProcess, proxy: FaultyProxy, mirror: MirrorProcess, client: httpx.Client
) -> None:
    digest, data = one_layer(upstream, MiB)
    r = client.head(blob_path(digest))
    assert r.status_code == 200
    assert int(r.headers["Content-Length"]) == len(data)
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.content == b""
    assert proxy.count("HEAD", BLOB) == 1
    assert proxy.count("GET", BLOB) == 0
    assert stored_files(mirror.root) == []
    assert staged_files(mirror.root) == []

    missing = sha256_digest(b"not there")
    assert client.head(blob_path(missing)).status_code == 404
    assert proxy.count("GET", BLOB) == 0


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs, for a mirror whose store fails with ENOSPC once it is filled."""
    with tmpfs(tmp_path / "small", "4m") as mount:
        yield mount


def test_head_of_a_blob_whose_fill_cannot_be_cached_asks_upstream(
    upstream: RegistryProcess, proxy: FaultyProxy, full_disk: Path
) -> None:
    """A HEAD arriving while a fill waits for upstream, and the store then refuses the
    bytes (disk full): the HEAD gets upstream's answer, never a 500."""
    digest, data = one_layer(upstream, MiB)
    mirror = mirror_on(full_disk, proxy.url)
    with mirror, httpx.Client(base_url=mirror.url, trust_env=False, timeout=60) as client:
        fill_disk(full_disk)
        proxy.delay("GET", BLOB, 1.5)
        got: list[Fetched] = []
        getter = threading.Thread(target=lambda: got.append(fetch(client, blob_path(digest))))
        getter.start()
        wait_until(lambda: proxy.count("GET", BLOB) == 1, interval=0.02)
        head = client.head(blob_path(digest))
        getter.join(30)
        assert head.status_code == 200, mirror.log()
        assert int(head.headers["Content-Length"]) == len(data)
        assert head.headers["Docker-Content-Digest"] == digest
        assert got[0].status == 200
        assert got[0].body == data  # served uncached, straight from upstream
        assert proxy.count("HEAD", BLOB) == 1
        log = mirror.log()
    assert_log_quiet(log)


def test_blob_redirect_to_a_cdn_is_followed_without_credentials(
    upstream: RegistryProcess, proxy: FaultyProxy, mirror_factory: MirrorFactory
) -> None:
    """Docker Hub answers blob GETs with a redirect to a CDN on another host: the mirror
    follows it, and the upstream's credentials stay with the upstream."""
    digest, data = one_layer(upstream, MiB)
    mirror = mirror_factory(
        proxy.url,
        name="cdn-mirror",
        args=[
            "--proxy-username",
            "alice",
            "--proxy-password",
            "s3cr3t-pw",
            "--proxy-allow-private-redirects",
            "true",
        ],  # the test CDN is on loopback
    )
    # The upstream asks for Basic credentials once; the mirror sends them from then on.
    proxy.status("GET", BLOB, 401, headers={"WWW-Authenticate": 'Basic realm="hub"'}, times=1)
    with (
        FaultyProxy(upstream.url) as cdn,
        httpx.Client(base_url=mirror.url, timeout=30, trust_env=False) as client,
    ):
        proxy.redirect("GET", BLOB, cdn.url + "{path}?X-Amz-Signature=abc")
        got = fetch(client, blob_path(digest))
        assert got.error is None
        assert got.body == data
        upstream_gets = proxy.requests("GET", BLOB)
        assert [r.status for r in upstream_gets] == [401, 307]
        assert upstream_gets[1].headers.get("Authorization", "").startswith("Basic ")
        served = cdn.requests("GET", BLOB)
        assert [(r.path, r.query, r.status) for r in served] == [
            (blob_path(digest), "X-Amz-Signature=abc", 200)
        ]
        assert "Authorization" not in served[0].headers
    assert published(mirror.root, digest) == data


def test_redirect_to_a_private_address_is_refused_by_default(
    upstream: RegistryProcess, proxy: FaultyProxy, mirror: MirrorProcess, client: httpx.Client
) -> None:
    digest, _ = one_layer(upstream, MiB)
    with FaultyProxy(upstream.url) as internal:
        proxy.redirect("GET", BLOB, internal.url + "{path}")
        response = client.get(blob_path(digest))
        assert response.status_code == 502
        assert error_code(response) == "UNKNOWN"
        assert internal.requests() == []
    assert "non-public address" in mirror.log()


# ---------------------------------------------------------------------- manifests


def _break_manifests(proxy: FaultyProxy, how: str) -> Fault:
    methods = ("HEAD", "GET")
    if how == "503":
        return proxy.status(methods, MANIFEST, 503, body=b'{"errors":[]}')
    if how == "429":
        return proxy.status(methods, MANIFEST, 429, headers=RATE_LIMIT_HEADERS)
    return proxy.delay(methods, MANIFEST, 3.0)  # "timeout": longer than the read timeout


@pytest.mark.parametrize("how", ["503", "429", "timeout"])
def test_manifest_by_tag_when_upstream_fails(
    how: str,
    upstream: RegistryProcess,
    proxy: FaultyProxy,
    mirror_factory: MirrorFactory,
) -> None:
    mirror = mirror_factory(proxy.url, args=["--proxy-read-timeout", "1s"])
    img = push_image(upstream.url, REPO, "latest")
    expected_status, expected_code = (
        (429, "TOOMANYREQUESTS") if how == "429" else (503, "UNAVAILABLE")
    )
    url = f"/v2/{REPO}/manifests/latest"
    with httpx.Client(base_url=mirror.url, timeout=30, trust_env=False) as client:
        # Not cached: the upstream's failure is the answer.
        fault = _break_manifests(proxy, how)
        r = client.get(url, headers=ACCEPT)
        assert r.status_code == expected_status
        assert error_code(r) == expected_code
        if how == "429":
            assert r.headers["Retry-After"] == "42"
            # The rate-limit headers were noted, parsed: remaining 0 of 100 per 6 hours.
            assert "rate limit: remaining 0 of 100 per 21600s" in mirror.log()
        if how != "timeout":
            head = client.head(url, headers=ACCEPT)
            assert head.status_code == expected_status
            assert head.headers.get("Retry-After") == ("42" if how == "429" else None)

        # Pulled once with a healthy upstream...
        proxy.remove(fault)
        r = client.get(url, headers=ACCEPT)
        assert r.status_code == 200
        assert r.content == img.manifest

        # ...the same failure now serves the cached manifest.
        _break_manifests(proxy, how)
        proxy.clear_log()
        r = client.get(url, headers=ACCEPT)
        assert r.status_code == 200
        assert r.content == img.manifest
        assert r.headers["Docker-Content-Digest"] == img.digest
        assert r.headers["Content-Type"] == img.media_type
        assert proxy.count("HEAD", r"/manifests/latest$") >= 1  # it did ask upstream first
        if how != "timeout":
            head = client.head(url, headers=ACCEPT)
            assert head.status_code == 200
            assert head.headers["Docker-Content-Digest"] == img.digest

        proxy.clear_log()
        r = client.get(f"/v2/{REPO}/manifests/{img.digest}", headers=ACCEPT)
        assert r.status_code == 200
        assert r.content == img.manifest
        assert proxy.requests() == []


def test_upstream_unreachable(
    upstream: RegistryProcess, proxy: FaultyProxy, mirror: MirrorProcess, client: httpx.Client
) -> None:
    img = push_image(upstream.url, REPO, "latest")
    edge = push_image(upstream.url, REPO, "edge", seed=2)
    assert client.get(f"/v2/{REPO}/manifests/latest", headers=ACCEPT).status_code == 200

    proxy.stop()
    r = client.get(f"/v2/{REPO}/manifests/latest", headers=ACCEPT)
    assert r.status_code == 200
    assert r.content == img.manifest
    assert r.headers["Docker-Content-Digest"] == img.digest
    assert r.headers.get("Warning", "").startswith("110 ")
    r = client.get(f"/v2/{REPO}/manifests/{img.digest}", headers=ACCEPT)
    assert r.status_code == 200
    r = client.get(f"/v2/{REPO}/manifests/edge", headers=ACCEPT)
    assert r.status_code == 503
    assert error_code(r) == "UNAVAILABLE"
    assert error_detail(r)  # says why
    assert client.get("/v2/").status_code == 200

    proxy.start()  # same port: the upstream is back
    r = client.get(f"/v2/{REPO}/manifests/edge", headers=ACCEPT)
    assert r.status_code == 200
    assert r.content == edge.manifest


def _tag_moved_while_manifests_fail(
    upstream: RegistryProcess, proxy: FaultyProxy, client: httpx.Client
) -> tuple[bytes, str]:
    """Cache ``latest``; retag it upstream; make manifest GETs (not HEADs) fail with 503.

    Returns the cached manifest and its digest."""
    old = push_image(upstream.url, REPO, "latest", seed=1)
    r = client.get(f"/v2/{REPO}/manifests/latest", headers=ACCEPT)
    assert r.content == old.manifest
    new = push_image(upstream.url, REPO, "latest", seed=2)
    assert new.digest != old.digest
    proxy.status("GET", MANIFEST, 503)
    proxy.clear_log()
    return old.manifest, old.digest


def test_cached_tag_served_when_upstream_fails_to_send_the_new_manifest(
    upstream: RegistryProcess, proxy: FaultyProxy, mirror: MirrorProcess, client: httpx.Client
) -> None:
    """HEAD says the tag moved, the GET of the new manifest answers 503: the tag is cached,
    so it is served from cache like any other upstream 5xx."""
    manifest, digest = _tag_moved_while_manifests_fail(upstream, proxy, client)
    r = client.get(f"/v2/{REPO}/manifests/latest", headers=ACCEPT)
    assert proxy.count("GET", MANIFEST) == 1  # upstream was asked, and failed
    assert r.status_code == 200, r.text
    assert r.content == manifest
    assert r.headers["Docker-Content-Digest"] == digest


def test_failed_revalidation_does_not_lose_the_cached_tag(
    upstream: RegistryProcess, proxy: FaultyProxy, mirror: MirrorProcess, client: httpx.Client
) -> None:
    """After a revalidation whose manifest fetch failed, a full outage must still find the
    tag's cached manifest (the tag must not point at a digest that was never cached)."""
    manifest, digest = _tag_moved_while_manifests_fail(upstream, proxy, client)
    client.get(f"/v2/{REPO}/manifests/latest", headers=ACCEPT)  # HEAD ok, GET 503
    proxy.stop()  # now upstream is gone entirely
    r = client.get(f"/v2/{REPO}/manifests/latest", headers=ACCEPT)
    assert r.status_code == 200, r.text
    assert r.content == manifest
    assert r.headers["Docker-Content-Digest"] == digest
