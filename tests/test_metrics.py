"""The mirror's metrics, scraped from the real process in front of a real upstream registry
(Debian's ``docker-registry``) and parsed with the client library's parser: exact counts
for a scripted pull (misses, then hits and a revalidated tag), the bytes from the cache
and from upstream, one download shared by concurrent cold clients, an upstream down
(stale answers, the breaker's gauges), evictions under a small quota, an admin's forget;
a logged-in client resolving tags with HEAD (its HEADs send no bytes) and asking another
repository's digests; the debug listener (``http.debug``), the main-port endpoint off,
admission without login, TLS; the rate limit an upstream announces and its 429s."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import generate_latest

from registry_mirror.metrics import HTTP_BUCKETS, Metrics
from tests.conftest import MirrorFactory
from tests.support.faulty import FaultyProxy
from tests.support.images import MANIFEST_ACCEPT, PushedImage, push_image
from tests.support.mirror import MirrorError, MirrorProcess, assert_log_quiet
from tests.support.nginx import Nginx
from tests.support.ports import free_port
from tests.support.prometheus import Samples, scrape
from tests.support.registry import RegistryProcess, make_htpasswd_line
from tests.support.store import blob_file, stored_files
from tests.support.tls import tls_args
from tests.support.waits import wait_until

MiB = 1 << 20
ACCEPT = {"Accept": MANIFEST_ACCEPT}
REGISTRY = "docker.io"  # the name the mirror gives its default upstream here (Docker Hub naming)
CACHE = "registry_mirror_cache_requests_total"
SERVED = "registry_mirror_served_bytes_total"
RECEIVED = "registry_mirror_upstream_received_bytes_total"


def metrics(mirror: MirrorProcess) -> Samples:
    return scrape(f"{mirror.url}/metrics", verify=False)


def cache(samples: Samples, kind: str, result: str) -> float:
    return samples.value(CACHE, registry=REGISTRY, kind=kind, result=result)


def served(samples: Samples, kind: str, result: str) -> float:
    return samples.value(SERVED, registry=REGISTRY, kind=kind, result=result)


def pull(mirror: MirrorProcess, image: PushedImage) -> None:
    """What a client pulling by tag asks: the manifest, then every blob, checked."""
    with httpx.Client(base_url=mirror.url, trust_env=False, timeout=60, verify=False) as client:
        manifest = client.get(f"/v2/{image.repo}/manifests/{image.tag}", headers=ACCEPT)
        assert manifest.status_code == 200, manifest.text
        assert manifest.content == image.manifest
        for digest, data in image.blobs.items():
            blob = client.get(f"/v2/{image.repo}/blobs/{digest}")
            assert blob.status_code == 200, blob.text
            assert blob.content == data


def disk_size(mirror: MirrorProcess, digest: str) -> int:
    return blob_file(mirror.root, digest).stat().st_blocks * 512


@pytest.mark.parametrize("tls", [False, True], ids=["http", "tls"])
def test_a_pull_then_a_warm_pull_are_counted_exactly(
    upstream: RegistryProcess, mirror_factory: MirrorFactory, tmp_path: Path, tls: bool
) -> None:
    image = push_image(upstream.url, "library/alpine", "3", layers=[300_000, 70_000])
    args = tls_args(tmp_path / "tls") if tls else []
    mirror = mirror_factory(upstream.url, args=args)
    blob_bytes = sum(len(data) for data in image.blobs.values())
    blobs = len(image.blobs)

    pull(mirror, image)  # cold: everything fetched

    def cached() -> float:
        return metrics(mirror).value(
            "registry_mirror_fills_total", registry=REGISTRY, result="cached"
        )

    # A client has its last byte on the verdict on the digest; the fill ends after the
    # commit, just after.
    wait_until(lambda: cached() == blobs, message=mirror.log)
    cold = metrics(mirror)
    assert cache(cold, "manifest", "miss") == 1
    assert cache(cold, "blob", "miss") == blobs
    assert cache(cold, "blob", "hit") == 0
    assert cache(cold, "manifest", "revalidated") == 0
    assert served(cold, "blob", "miss") == blob_bytes
    assert served(cold, "manifest", "miss") == len(image.manifest)
    assert cold.value(RECEIVED, registry=REGISTRY, kind="blob") == blob_bytes
    assert cold.value(RECEIVED, registry=REGISTRY, kind="manifest") == len(image.manifest)
    assert cold.value("registry_mirror_fills_total", registry=REGISTRY, result="cached") == blobs

    pull(mirror, image)  # warm: the tag asked again, the blobs from the cache
    with httpx.Client(base_url=mirror.url, trust_env=False, verify=False) as client:
        by_digest = client.get(f"/v2/{image.repo}/manifests/{image.digest}", headers=ACCEPT)
        assert by_digest.status_code == 200
    warm = metrics(mirror)
    assert cache(warm, "manifest", "miss") == 1
    assert cache(warm, "manifest", "revalidated") == 1
    assert cache(warm, "manifest", "hit") == 1
    assert cache(warm, "blob", "miss") == blobs
    assert cache(warm, "blob", "hit") == blobs
    assert served(warm, "blob", "hit") == blob_bytes  # the bandwidth saved
    assert served(warm, "manifest", "hit") == len(image.manifest)
    assert served(warm, "manifest", "revalidated") == len(image.manifest)
    # Nothing more came from upstream but the tag check (a HEAD, no body).
    assert warm.value(RECEIVED, registry=REGISTRY, kind="blob") == blob_bytes
    assert warm.value(RECEIVED, registry=REGISTRY, kind="manifest") == len(image.manifest)
    requests = "registry_mirror_upstream_requests_total"
    assert warm.value(requests, registry=REGISTRY, method="HEAD", status="2xx") == 2
    assert warm.value(requests, registry=REGISTRY, method="GET", status="2xx") == 1 + blobs
    count = "registry_mirror_upstream_request_duration_seconds_count"
    assert warm.value(count, registry=REGISTRY, method="GET") == 1 + blobs
    # Requests by route and status, timed.
    http = "registry_mirror_http_requests_total"
    assert warm.value(http, route="manifest", status="2xx") == 3
    assert warm.value(http, route="blob", status="2xx") == 2 * blobs
    assert warm.value("registry_mirror_http_request_duration_seconds_count", route="blob") == (
        2 * blobs
    )
    # The storage figures, read at scrape time.
    wait_until(lambda: len(stored_files(mirror.root)) == blobs + 1, message="files published")
    warm = metrics(mirror)
    assert warm.value("registry_mirror_storage_blobs") == blobs + 1
    on_disk = sum(disk_size(mirror, d) for d in [image.digest, *image.blobs])
    assert warm.value("registry_mirror_storage_used_bytes") == on_disk
    assert warm.value("registry_mirror_storage_free_bytes") > 0
    assert warm.value("registry_mirror_upstream_up", registry=REGISTRY) == 1
    assert warm.value("registry_mirror_upstream_last_success_timestamp_seconds", registry=REGISTRY)
    assert warm.value("registry_mirror_fills_in_progress", registry=REGISTRY) == 0
    assert warm.total("registry_mirror_build_info", version="0.1.0") == 1
    # Labels stay bounded: no repository, digest or path anywhere.
    for label in ("repository", "repo", "digest", "path"):
        assert not warm.label_values(label)
    assert not [v for v in warm.label_values("registry") if v != REGISTRY]
    assert_log_quiet(mirror.log())


@pytest.fixture
def proxied(proxy: FaultyProxy, mirror_factory: MirrorFactory) -> MirrorProcess:
    """The mirror with the fault-injecting proxy in front of the upstream."""
    return mirror_factory(proxy.url)


def test_concurrent_cold_clients_share_one_download_and_are_counted_coalesced(
    upstream: RegistryProcess, proxy: FaultyProxy, proxied: MirrorProcess
) -> None:
    image = push_image(upstream.url, "library/alpine", "latest", layers=[4 * MiB])
    digest = image.layer_digests[0]
    data = image.blobs[digest]
    gate = proxy.gate("GET", r"/blobs/sha256:[0-9a-f]{64}$", at_bytes=MiB)
    clients = 4
    bodies: list[bytes] = []
    lock = threading.Lock()

    def get() -> None:
        with httpx.Client(base_url=proxied.url, trust_env=False, timeout=60) as client:
            body = client.get(f"/v2/{image.repo}/blobs/{digest}").content
        with lock:
            bodies.append(body)

    with ThreadPoolExecutor(clients) as pool:
        first = pool.submit(get)
        gate.wait_reached()
        rest = [pool.submit(get) for _ in range(clients - 1)]

        def following() -> float:
            return metrics(proxied).value("registry_mirror_fill_clients", registry=REGISTRY)

        # Every client is taking bytes from the one download held at the gate.
        wait_until(lambda: following() == clients, message=lambda: proxied.log()[-3000:])
        during = metrics(proxied)
        assert during.value("registry_mirror_fills_in_progress", registry=REGISTRY) == 1
        gate.release()
        for future in [first, *rest]:
            future.result()
    assert bodies == [data] * clients
    assert proxy.count("GET", "/blobs/") == 1

    def ended() -> float:
        return metrics(proxied).total("registry_mirror_fills_total", registry=REGISTRY)

    wait_until(lambda: ended() == 1, message=proxied.log)  # committed after the last byte
    after = metrics(proxied)
    assert cache(after, "blob", "miss") == 1
    assert cache(after, "blob", "coalesced") == clients - 1
    assert served(after, "blob", "miss") == len(data)
    assert served(after, "blob", "coalesced") == (clients - 1) * len(data)
    assert after.value(RECEIVED, registry=REGISTRY, kind="blob") == len(data)
    assert after.value("registry_mirror_fills_total", registry=REGISTRY, result="cached") == 1
    assert after.value("registry_mirror_fill_clients", registry=REGISTRY) == 0
    assert after.value("registry_mirror_fills_in_progress", registry=REGISTRY) == 0


def test_an_upstream_down_is_counted_and_its_tags_answered_stale(
    upstream: RegistryProcess, proxy: FaultyProxy, proxied: MirrorProcess
) -> None:
    """Upstream answers 503 to everything: each tag is served from the cache (stale) and
    counted so; the breaker marks upstream down after its threshold, which the gauges show."""
    image = push_image(upstream.url, "library/alpine", "1", layers=[1000])
    pull(proxied, image)
    up = metrics(proxied)
    assert up.value("registry_mirror_upstream_up", registry=REGISTRY) == 1
    assert up.value("registry_mirror_upstream_consecutive_failures", registry=REGISTRY) == 0
    assert (
        up.get("registry_mirror_upstream_last_failure_timestamp_seconds", registry=REGISTRY) is None
    )
    proxy.status(None, r"^/v2/", 503)
    asked = 4
    with httpx.Client(base_url=proxied.url, trust_env=False, timeout=30) as client:
        for _ in range(asked):
            answer = client.get(f"/v2/{image.repo}/manifests/{image.tag}", headers=ACCEPT)
            assert answer.status_code == 200 and answer.content == image.manifest
            assert "Warning" in answer.headers
    refused = len([r for r in proxy.requests() if r.status == 503])
    assert 3 <= refused < asked  # the last one not asked of upstream: it is marked down
    down = metrics(proxied)
    assert cache(down, "manifest", "stale") == asked
    assert served(down, "manifest", "stale") == asked * len(image.manifest)
    assert down.value("registry_mirror_upstream_up", registry=REGISTRY) == 0
    failures = down.value("registry_mirror_upstream_consecutive_failures", registry=REGISTRY)
    assert failures >= 3
    success = down.value(
        "registry_mirror_upstream_last_success_timestamp_seconds", registry=REGISTRY
    )
    failure = down.value(
        "registry_mirror_upstream_last_failure_timestamp_seconds", registry=REGISTRY
    )
    assert failure >= success
    requests = "registry_mirror_upstream_requests_total"
    assert down.total(requests, registry=REGISTRY, status="5xx") == refused


def test_eviction_under_a_small_quota_is_counted_by_reason(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    images = [
        push_image(upstream.url, f"library/{name}", "1", layers=[1_000_000], seed=seed)
        for seed, name in enumerate("abcd")
    ]
    mirror = mirror_factory(upstream.url, args=["--storage-quota", "3.5MB"])
    for image in images[:3]:
        pull(mirror, image)
    oldest = images[0]
    evicted = [oldest.digest, *oldest.blobs]
    evicted_bytes = sum(disk_size(mirror, digest) for digest in evicted)
    before = metrics(mirror)
    assert before.value("registry_mirror_evictions_total", reason="quota") == 0
    assert before.value("registry_mirror_storage_quota_bytes") == 3_500_000

    pull(mirror, images[3])  # over the quota: the least recently used image goes

    def evictions() -> float:
        return metrics(mirror).value("registry_mirror_evictions_total", reason="quota")

    wait_until(lambda: evictions() == 1, 15, interval=0.1, message=mirror.log)
    after = metrics(mirror)
    assert after.value("registry_mirror_evicted_blobs_total", reason="quota") == len(evicted)
    assert after.value("registry_mirror_evicted_bytes_total", reason="quota") == evicted_bytes
    assert after.value("registry_mirror_evictions_total", reason="max_idle") == 0
    assert not any(blob_file(mirror.root, digest).exists() for digest in evicted)
    kept = sum(1 + len(image.blobs) for image in images[1:])
    assert after.value("registry_mirror_storage_blobs") == kept
    on_disk = sum(p.stat().st_blocks * 512 for p in stored_files(mirror.root))
    assert after.value("registry_mirror_storage_used_bytes") == on_disk


def test_an_image_forgotten_by_an_admin_leaves_the_storage_gauges(
    upstream: RegistryProcess, mirror_factory: MirrorFactory, tmp_path: Path
) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(make_htpasswd_line("root", "root-pw") + "\n")
    mirror = mirror_factory(
        upstream.url, args=["--auth-htpasswd-path", str(htpasswd), "--auth-admins", "root"]
    )
    image = push_image(upstream.url, "library/alpine", "1", layers=[50_000])
    with httpx.Client(base_url=mirror.url, auth=("root", "root-pw"), trust_env=False) as admin:
        for path in [f"manifests/{image.tag}", *(f"blobs/{digest}" for digest in image.blobs)]:
            assert admin.get(f"/v2/{image.repo}/{path}", headers=ACCEPT).status_code == 200
        files = len(image.blobs) + 1

        def stored() -> float:
            return metrics(mirror).value("registry_mirror_storage_blobs")

        wait_until(lambda: stored() == files, message=mirror.log)
        before = metrics(mirror)
        on_disk = sum(disk_size(mirror, d) for d in [image.digest, *image.blobs])
        assert before.value("registry_mirror_storage_used_bytes") == on_disk
        forgotten = admin.post("/admin/images/forget", json={"image": "alpine:1"})
        assert forgotten.status_code == 200, forgotten.text
        assert forgotten.json()["files"] == files
    after = metrics(mirror)
    assert after.value("registry_mirror_storage_blobs") == 0
    assert after.value("registry_mirror_storage_used_bytes") == 0
    assert not stored_files(mirror.root)


def _get(url: str, **client: object) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=30, verify=False, **client) as http:  # type: ignore[arg-type]
        return http.get(url)


def test_debug_listener_serves_the_metrics_and_the_main_port_can_be_turned_off(
    upstream: RegistryProcess, mirror_factory: MirrorFactory, tmp_path: Path
) -> None:
    """registry:2's keys (``http.debug.addr``, ``http.debug.prometheus.*``, here through
    registry:2's environment variables) and the main-port endpoint off."""
    image = push_image(upstream.url, "library/alpine", "1", layers=[1000])
    port = free_port()
    mirror = mirror_factory(
        upstream.url,
        args=["--metrics-on-main-port", "false", *tls_args(tmp_path / "tls")],
        env={
            "REGISTRY_HTTP_DEBUG_ADDR": f"127.0.0.1:{port}",
            "REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED": "true",
            "REGISTRY_HTTP_DEBUG_PROMETHEUS_PATH": "/debug/metrics",
        },
    )
    pull(mirror, image)
    debug = scrape(f"http://127.0.0.1:{port}/debug/metrics")
    assert cache(debug, "blob", "miss") == len(image.blobs)
    assert _get(f"http://127.0.0.1:{port}/metrics").status_code == 404
    main = _get(f"{mirror.url}/metrics")
    assert main.status_code == 404
    assert main.json()["errors"][0]["code"] == "NOT_FOUND"
    assert "registry_mirror" not in main.text
    assert f"metrics on 127.0.0.1:{port}/debug/metrics (debug listener)" in mirror.log()


def test_debug_addr_without_prometheus_enabled_starts_no_listener(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    port = free_port()
    limits = ["--storage-min-free", "1MB", "--storage-max-idle", "30d"]
    mirror = mirror_factory(upstream.url, args=["--http-debug-addr", f"127.0.0.1:{port}", *limits])
    with pytest.raises(httpx.ConnectError):
        _get(f"http://127.0.0.1:{port}/metrics")
    samples = metrics(mirror)
    assert samples.total("registry_mirror_build_info", version="0.1.0") == 1
    # The limits set, as gauges; the one not set is not there.
    assert samples.value("registry_mirror_storage_min_free_bytes") == 1_000_000
    assert samples.value("registry_mirror_storage_max_idle_seconds") == 30 * 86400
    assert samples.get("registry_mirror_storage_quota_bytes") is None
    assert "the debug listener would serve nothing" in mirror.log()


def test_a_debug_address_in_use_stops_the_mirror_naming_the_setting(
    upstream: RegistryProcess, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        args = ["--http-debug-addr", address, "--http-debug-prometheus-enabled", "true"]
        mirror = MirrorProcess(tmp_path / "mirror", upstream.url, args=args)
        try:
            try:
                mirror.start()
            except MirrorError:
                pass  # gone before it answered
            else:
                assert mirror.wait_exit() == 1  # the main port was up a moment
        finally:
            mirror.stop()
    assert f"cannot listen on http.debug.addr {address}: " in mirror.log()


INSIDER = "127.0.0.2"  # in the allow list below; 127.0.0.1 is not


def insider() -> httpx.HTTPTransport:
    return httpx.HTTPTransport(local_address=INSIDER, verify=False)


@pytest.fixture(params=["http", "tls"])
def guarded(
    request: pytest.FixtureRequest,
    upstream: RegistryProcess,
    mirror_factory: MirrorFactory,
    tmp_path: Path,
) -> Iterator[MirrorProcess]:
    """A mirror with htpasswd logins and a network allow list, over HTTP and TLS."""
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(make_htpasswd_line("carol", "carols-pw") + "\n")
    args = ["--auth-htpasswd-path", str(htpasswd), "--access-allow", f"{INSIDER}/32"]
    if request.param == "tls":
        args += tls_args(tmp_path / "tls")
    # The readiness probe comes from 127.0.0.1, refused (403): up, and guarded.
    with MirrorProcess(tmp_path / "guarded", upstream.url, args=args) as mirror:
        yield mirror


def test_metrics_need_no_login_but_are_refused_outside_the_allow_list(
    guarded: MirrorProcess,
) -> None:
    assert _get(f"{guarded.url}/v2/", transport=insider()).status_code == 401  # logins are on
    samples = scrape(f"{guarded.url}/metrics", transport=insider())
    assert samples.total("registry_mirror_build_info", version="0.1.0") == 1
    outside = _get(f"{guarded.url}/metrics")  # from 127.0.0.1
    assert outside.status_code == 403
    assert outside.json()["errors"][0]["code"] == "DENIED"
    assert "registry_mirror" not in outside.text
    after = scrape(f"{guarded.url}/metrics", transport=insider())
    assert after.value("registry_mirror_http_requests_total", route="metrics", status="2xx") >= 1
    assert after.value("registry_mirror_http_requests_total", route="other", status="4xx") >= 1


def test_a_logged_in_head_first_client_is_counted_and_its_heads_send_no_bytes(
    upstream: RegistryProcess, guarded: MirrorProcess
) -> None:
    """containerd's way (HEAD the tag, GET the manifest by digest, HEAD then GET each
    blob), logged in, over HTTP and TLS; then the same digests asked under another
    repository (hits, once upstream confirms them there). A request refused for want of
    a login is no cache request."""
    image = push_image(upstream.url, "library/alpine", "3", layers=[40_000])
    other = push_image(upstream.url, "library/other", "3", layers=[40_000])
    assert (other.digest, other.blobs) == (image.digest, image.blobs)
    blob_bytes = sum(len(data) for data in image.blobs.values())
    blobs = len(image.blobs)

    def head_first(client: httpx.Client, repo: str) -> None:
        head = client.head(f"/v2/{repo}/manifests/3", headers=ACCEPT)
        assert head.status_code == 200, head.text
        digest = head.headers["Docker-Content-Digest"]
        manifest = client.get(f"/v2/{repo}/manifests/{digest}", headers=ACCEPT)
        assert manifest.content == image.manifest
        for blob, data in image.blobs.items():
            assert client.head(f"/v2/{repo}/blobs/{blob}").status_code == 200
            assert client.get(f"/v2/{repo}/blobs/{blob}").content == data

    def samples() -> Samples:
        return scrape(f"{guarded.url}/metrics", transport=insider())

    with httpx.Client(
        base_url=guarded.url, auth=("carol", "carols-pw"), transport=insider(), timeout=60
    ) as client:
        head_first(client, image.repo)  # cold
        wait_until(
            lambda: samples().total("registry_mirror_fills_total", result="cached") == blobs,
            message=guarded.log,
        )
        cold = samples()
        head_first(client, image.repo)  # warm
        warm = samples()
        for blob in image.blobs:  # the same bytes, another repository
            assert client.get(f"/v2/{other.repo}/blobs/{blob}").status_code == 200
        by_digest = client.get(f"/v2/{other.repo}/manifests/{image.digest}", headers=ACCEPT)
        assert by_digest.content == image.manifest
    elsewhere = samples()
    with httpx.Client(base_url=guarded.url, transport=insider()) as anonymous:
        refused = anonymous.get(f"/v2/{image.repo}/manifests/{image.digest}", headers=ACCEPT)
        assert refused.status_code == 401
    after = samples()

    # Cold: everything asked of upstream; a HEAD's answer has no body.
    assert cache(cold, "manifest", "miss") == 2
    assert served(cold, "manifest", "miss") == len(image.manifest)
    assert cache(cold, "blob", "miss") == 2 * blobs
    assert served(cold, "blob", "miss") == blob_bytes
    assert cold.value(RECEIVED, registry=REGISTRY, kind="blob") == blob_bytes
    # Warm: the tag revalidated by its HEAD, the rest from the cache.
    assert cache(warm, "manifest", "revalidated") == 1
    assert served(warm, "manifest", "revalidated") == 0
    assert cache(warm, "manifest", "hit") == 1
    assert served(warm, "manifest", "hit") == len(image.manifest)
    assert cache(warm, "blob", "hit") == 2 * blobs
    assert served(warm, "blob", "hit") == blob_bytes
    assert cache(warm, "manifest", "miss") == 2 and cache(warm, "blob", "miss") == 2 * blobs
    # Another repository's digests: hits, confirmed upstream by a HEAD each, no download.
    assert cache(elsewhere, "blob", "hit") == 3 * blobs
    assert cache(elsewhere, "manifest", "hit") == 2
    assert served(elsewhere, "blob", "hit") == 2 * blob_bytes
    assert elsewhere.value(RECEIVED, registry=REGISTRY, kind="blob") == blob_bytes
    requests = "registry_mirror_upstream_requests_total"
    confirmed = elsewhere.value(requests, registry=REGISTRY, method="HEAD", status="2xx")
    assert confirmed - warm.value(requests, registry=REGISTRY, method="HEAD", status="2xx") == (
        blobs + 1
    )
    # Refused for want of a login: an HTTP request answered 401, no cache result.
    assert after.total(CACHE) == elsewhere.total(CACHE)
    http = "registry_mirror_http_requests_total"
    assert after.value(http, route="manifest", status="4xx") == 1


# --------------------------------------------------------------------- rate limits


RATE_LIMITED = {
    "Retry-After": "42",
    "ratelimit-limit": "100;w=21600",
    "ratelimit-remaining": "0;w=21600",
}


def test_429s_and_the_rate_limit_they_announce_are_counted(
    upstream: RegistryProcess, proxy: FaultyProxy, proxied: MirrorProcess
) -> None:
    proxy.status(["HEAD", "GET"], r"/manifests/", 429, headers=RATE_LIMITED)
    with httpx.Client(base_url=proxied.url, trust_env=False, timeout=30) as client:
        for _ in range(3):
            answer = client.get("/v2/library/alpine/manifests/latest", headers=ACCEPT)
            assert answer.status_code == 429
    refused = len([r for r in proxy.requests() if r.status == 429])
    assert refused >= 3
    samples = metrics(proxied)
    assert samples.value("registry_mirror_upstream_rate_limited_total", registry=REGISTRY) == (
        refused
    )
    assert samples.value("registry_mirror_upstream_ratelimit_limit", registry=REGISTRY) == 100
    assert samples.value("registry_mirror_upstream_ratelimit_remaining", registry=REGISTRY) == 0
    window = "registry_mirror_upstream_ratelimit_window_seconds"
    assert samples.value(window, registry=REGISTRY) == 21600
    requests = "registry_mirror_upstream_requests_total"
    assert samples.total(requests, registry=REGISTRY, status="4xx") == refused


def test_the_rate_limit_of_successful_answers_is_a_gauge(
    upstream: RegistryProcess, mirror_factory: MirrorFactory, tmp_path: Path
) -> None:
    """An upstream announcing its limit on every answer, as Docker Hub does (nginx in
    front of the registry adds the headers): the gauges follow the latest figures."""
    image = push_image(upstream.url, "library/alpine", "1", layers=[1000])
    headers = (
        'add_header ratelimit-limit "180;w=3600" always;'
        ' add_header ratelimit-remaining "$remaining;w=3600" always;'
    )
    # The remaining count nginx announces: 179 for the HEAD of a tag, 150 for the rest.
    http = "map $request_method $remaining { HEAD 179; default 150; }"
    with Nginx(tmp_path / "nginx", [upstream.url], http=http, location=headers) as nginx:
        mirror = mirror_factory(nginx.urls[0])
        with httpx.Client(base_url=mirror.url, trust_env=False) as client:
            assert client.head(f"/v2/{image.repo}/manifests/1", headers=ACCEPT).status_code == 200
            head = metrics(mirror)
            pull(mirror, image)
            after = metrics(mirror)
    ratelimit = "registry_mirror_upstream_ratelimit_"
    assert head.value(ratelimit + "limit", registry=REGISTRY) == 180
    assert head.value(ratelimit + "remaining", registry=REGISTRY) == 179
    assert head.value(ratelimit + "window_seconds", registry=REGISTRY) == 3600
    assert after.value(ratelimit + "remaining", registry=REGISTRY) == 150
    assert after.value("registry_mirror_upstream_rate_limited_total", registry=REGISTRY) == 0


# --------------------------------------------------------------------- units


def test_histogram_buckets_are_cumulative_with_prometheus_le_semantics() -> None:
    """A value on a bound counts in that bucket (``le``); the families parse back."""
    measured = Metrics("9.9", ("docker.io",))
    for seconds in (0.0005, 0.0006, 0.001, 400.0):
        measured.http_request("blob", 206, seconds)
    measured.http_request("blob", 503, 0.02)
    measured.cache_request("docker.io", "blob", "hit", 1234)
    samples = Samples(generate_latest(measured.registry).decode())
    bucket = "registry_mirror_http_request_duration_seconds_bucket"
    assert samples.value(bucket, route="blob", le="0.0005") == 1
    assert samples.value(bucket, route="blob", le="0.001") == 3
    assert samples.value(bucket, route="blob", le="0.025") == 4
    assert samples.value(bucket, route="blob", le="300.0") == 4
    assert samples.value(bucket, route="blob", le="+Inf") == 5
    assert len([k for n, k in samples.by_key if n == bucket]) == len(HTTP_BUCKETS) + 1
    assert samples.value("registry_mirror_http_request_duration_seconds_count", route="blob") == 5
    total = samples.value("registry_mirror_http_request_duration_seconds_sum", route="blob")
    assert total == pytest.approx(400.0221)
    requests = "registry_mirror_http_requests_total"
    assert samples.value(requests, route="blob", status="2xx") == 4
    assert samples.value(requests, route="blob", status="5xx") == 1
    assert samples.value(CACHE, registry="docker.io", kind="blob", result="hit") == 1
    assert samples.value(SERVED, registry="docker.io", kind="blob", result="hit") == 1234
    assert samples.value(CACHE, registry="docker.io", kind="tags", result="stale") == 0
    assert samples.types["registry_mirror_http_request_duration_seconds"] == "histogram"
    assert samples.types["registry_mirror_cache_requests"] == "counter"
    assert samples.total("registry_mirror_build_info", version="9.9") == 1


def test_each_application_has_a_registry_of_its_own() -> None:
    one, two = Metrics("1", ("a.io",)), Metrics("1", ("b.io",))
    one.cache_request("a.io", "blob", "miss", 10)
    assert (
        Samples(generate_latest(two.registry).decode()).get(
            CACHE, registry="a.io", kind="blob", result="miss"
        )
        is None
    )
    assert "registry_mirror" not in generate_latest(DEFAULT_REGISTRY).decode()
