"""Safe to expose: client authentication and the anonymous read policy, the network allow
list behind trusted proxies, per-client and global limits, header limits and idle
connections, TLS with reload, and secrets that never leave the mirror."""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest

from registry_mirror.cli import _exposure_warning
from registry_mirror.config import load_settings
from tests.conftest import MirrorFactory
from tests.support.faulty import FaultyProxy
from tests.support.images import MANIFEST_ACCEPT, PushedImage, push_image
from tests.support.mirror import MirrorProcess
from tests.support.registry import RegistryProcess, make_htpasswd_line
from tests.support.tls import make_cert

PASSWORD = "Pa55-for-the-mirror"


@pytest.fixture
def images(upstream: RegistryProcess) -> dict[str, PushedImage]:
    return {
        "public": push_image(upstream.url, "library/public", "1", layers=[5000], seed=1),
        "private": push_image(upstream.url, "acme/private", "1", layers=[5000], seed=2),
    }


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    path.write_text(make_htpasswd_line("carol", PASSWORD) + "\n")
    return path


def manifest(
    mirror: MirrorProcess, repo: str, auth: tuple[str, str] | None = None
) -> httpx.Response:
    with httpx.Client(base_url=mirror.url, trust_env=False, auth=auth, timeout=30) as client:
        return client.get(f"/v2/{repo}/manifests/1", headers={"Accept": MANIFEST_ACCEPT})


def test_login_required_except_for_the_anonymous_policy(
    upstream: RegistryProcess,
    images: dict[str, PushedImage],
    htpasswd: Path,
    mirror_factory: MirrorFactory,
) -> None:
    # registry:2's own variables for the htpasswd file and realm.
    mirror = mirror_factory(
        upstream.url,
        env={
            "REGISTRY_AUTH_HTPASSWD_PATH": str(htpasswd),
            "REGISTRY_AUTH_HTPASSWD_REALM": "Mirror Realm",
        },
        args=["--auth-anonymous", "docker.io/library/*"],
    )
    with httpx.Client(base_url=mirror.url, trust_env=False) as client:
        ping = client.get("/v2/")
        assert ping.status_code == 401
        assert ping.headers["WWW-Authenticate"] == 'Basic realm="Mirror Realm"'
        assert ping.json()["errors"][0]["code"] == "UNAUTHORIZED"
        assert client.get("/v2/", auth=("carol", PASSWORD)).status_code == 200
    assert manifest(mirror, "library/public").status_code == 200
    refused = manifest(mirror, "acme/private")
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == 'Basic realm="Mirror Realm"'
    upstream.clear_log()
    assert manifest(mirror, "acme/private", ("carol", "wrong")).status_code == 401
    assert manifest(mirror, "acme/private", ("mallory", PASSWORD)).status_code == 401
    assert upstream.requests() == []  # refused before anything reached upstream
    allowed = manifest(mirror, "acme/private", ("carol", PASSWORD))
    assert allowed.status_code == 200
    assert allowed.content == images["private"].manifest
    with httpx.Client(base_url=mirror.url, trust_env=False) as client:
        assert client.get("/v2/_catalog").json() == {"repositories": ["library/public"]}
        listing = client.get("/v2/_catalog", auth=("carol", PASSWORD)).json()
        assert listing == {"repositories": ["acme/private", "library/public"]}
        blob = images["private"].layer_digests[0]
        assert client.get(f"/v2/acme/private/blobs/{blob}").status_code == 401
    assert PASSWORD not in mirror.log()


def test_htpasswd_file_is_read_again_when_it_changes(
    upstream: RegistryProcess,
    images: dict[str, PushedImage],
    htpasswd: Path,
    mirror_factory: MirrorFactory,
) -> None:
    mirror = mirror_factory(upstream.url, args=["--auth-htpasswd-path", str(htpasswd)])
    assert manifest(mirror, "acme/private", ("dave", "new-pass")).status_code == 401
    htpasswd.write_text(make_htpasswd_line("dave", "new-pass") + "\n")
    time.sleep(5.5)  # the file is looked at again at most every 5 s
    assert manifest(mirror, "acme/private", ("dave", "new-pass")).status_code == 200
    assert manifest(mirror, "acme/private", ("carol", PASSWORD)).status_code == 401


def test_bad_htpasswd_file_is_a_clear_startup_error(
    upstream: RegistryProcess, tmp_path: Path
) -> None:
    md5 = tmp_path / "md5"
    md5.write_text("eve:$apr1$abc$def\n")
    for path, expected in ((md5, "only bcrypt entries"), (tmp_path / "none", "cannot read")):
        mirror = MirrorProcess(
            tmp_path / "m", upstream.url, args=["--auth-htpasswd-path", str(path)]
        )
        with pytest.raises(Exception, match=expected):
            mirror.start(timeout=10)
        assert "Traceback" not in mirror.log()


def test_network_allow_list_and_trusted_proxies(
    upstream: RegistryProcess, images: dict[str, PushedImage], mirror_factory: MirrorFactory
) -> None:
    outside = mirror_factory(upstream.url, name="outside", args=["--access-allow", "10.0.0.0/8"])
    with httpx.Client(base_url=outside.url, trust_env=False) as client:
        denied = client.get("/v2/library/public/manifests/1")
        assert denied.status_code == 403
        assert denied.json()["errors"][0]["code"] == "DENIED"
        # X-Forwarded-For is not believed from a peer that is not a trusted proxy.
        spoofed = client.get("/v2/", headers={"X-Forwarded-For": "10.1.2.3"})
        assert spoofed.status_code == 403

    behind = mirror_factory(
        upstream.url,
        name="behind",
        args=["--access-allow", "10.0.0.0/8", "--access-trusted-proxies", "127.0.0.1/32"],
    )
    with httpx.Client(base_url=behind.url, trust_env=False) as client:
        forwarded = client.get(
            "/v2/library/public/manifests/1",
            headers={"X-Forwarded-For": "10.1.2.3", "Accept": MANIFEST_ACCEPT},
        )
        assert forwarded.status_code == 200
        chain = client.get("/v2/", headers={"X-Forwarded-For": "10.9.9.9, 192.0.2.7"})
        assert chain.status_code == 403  # the address the proxy saw is outside the list
        assert client.get("/v2/").status_code == 403  # the proxy itself is not a client


def test_per_client_request_rate(upstream: RegistryProcess, mirror_factory: MirrorFactory) -> None:
    mirror = mirror_factory(
        upstream.url, args=["--limits-requests-per-second", "1", "--limits-burst", "3"]
    )
    time.sleep(3.1)  # the readiness check's requests are forgotten: a full burst again
    with httpx.Client(base_url=mirror.url, trust_env=False) as client:
        statuses = [client.get("/v2/").status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
        limited = client.get("/v2/")
        assert limited.status_code == 429
        assert limited.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert 1 <= int(limited.headers["Retry-After"]) <= 2
        time.sleep(2.1)
        assert client.get("/v2/").status_code == 200


def test_distinct_repositories_per_client(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    mirror = mirror_factory(upstream.url, args=["--limits-repositories-per-client", "2"])
    upstream.clear_log()
    with httpx.Client(base_url=mirror.url, trust_env=False) as client:
        assert client.get("/v2/flood/a/manifests/1").status_code == 404
        assert client.get("/v2/flood/b/manifests/1").status_code == 404
        assert client.get("/v2/flood/a/manifests/2").status_code == 404  # seen already
        third = client.get("/v2/flood/c/manifests/1")
        assert third.status_code == 429
        assert int(third.headers["Retry-After"]) > 0
    assert upstream.count(None, r"/flood/c/") == 0


def test_concurrent_download_limits(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    first = push_image(upstream.url, "library/slow", "1", layers=[2_000_000], seed=5)
    second = push_image(upstream.url, "library/slow2", "1", layers=[2_000_000], seed=6)
    with FaultyProxy(upstream.url) as proxy:
        gate = proxy.gate("GET", r"/blobs/sha256:", at_bytes=100_000, times=1)
        mirror = mirror_factory(
            proxy.url,
            args=["--limits-downloads-per-client", "1", "--limits-upstream-fetches", "1"],
        )
        results: list[int] = []

        def slow_get() -> None:
            with httpx.Client(base_url=mirror.url, trust_env=False, timeout=30) as c:
                results.append(
                    c.get(f"/v2/library/slow/blobs/{first.layer_digests[0]}").status_code
                )

        thread = threading.Thread(target=slow_get)
        thread.start()
        gate.wait_reached()
        with httpx.Client(base_url=mirror.url, trust_env=False) as client:
            busy = client.get(f"/v2/library/slow2/blobs/{second.layer_digests[0]}")
        assert busy.status_code == 429
        assert busy.headers["Retry-After"]
        gate.release()
        thread.join()
        assert results == [200]
        with httpx.Client(base_url=mirror.url, trust_env=False) as client:
            done = client.get(f"/v2/library/slow2/blobs/{second.layer_digests[0]}")
            assert done.status_code == 200


def test_header_limits_and_idle_connections(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    mirror = mirror_factory(upstream.url, args=["--http-idle-timeout", "1s"])
    with httpx.Client(base_url=mirror.url, trust_env=False) as client:
        many = client.get("/v2/", headers={f"X-H{i}": "v" for i in range(150)})
        assert many.status_code == 400
        huge = client.get("/v2/", headers={"X-Big": "x" * 20_000})
        assert huge.status_code in (400, 431)
    # A client that trickles its headers (slowloris) is cut off.
    with socket.create_connection(("127.0.0.1", mirror.port)) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 6:
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                closed = True
                break
            sock.settimeout(0.3)
            try:
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        assert closed
        assert time.monotonic() - started < 4
    with httpx.Client(base_url=mirror.url, trust_env=False) as client:
        assert client.get("/v2/").status_code == 200
    assert "Traceback" not in mirror.log()


def presented_cert(port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


def test_tls_and_certificate_reload_on_sighup(
    upstream: RegistryProcess,
    images: dict[str, PushedImage],
    mirror_factory: MirrorFactory,
    tmp_path: Path,
) -> None:
    cert, key, first_der = make_cert(tmp_path / "tls", "first")
    mirror = mirror_factory(
        upstream.url,
        env={"REGISTRY_HTTP_TLS_CERTIFICATE": str(cert), "REGISTRY_HTTP_TLS_KEY": str(key)},
    )
    url = f"https://127.0.0.1:{mirror.port}"
    assert presented_cert(mirror.port) == first_der
    with httpx.Client(
        base_url=url, verify=ssl.create_default_context(cafile=str(cert)), trust_env=False
    ) as kept:
        response = kept.get("/v2/library/public/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
        assert response.status_code == 200
        _, _, second_der = make_cert(tmp_path / "tls", "second")  # replaces both files
        mirror.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while presented_cert(mirror.port) != second_der and time.monotonic() < deadline:
            time.sleep(0.1)
        assert presented_cert(mirror.port) == second_der
        # The connection made before the reload was not dropped.
        again = kept.get("/v2/library/public/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
        assert again.status_code == 200
    assert "TLS certificate reloaded" in mirror.log()


def test_startup_warning_when_exposed_without_protection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    open_settings, _ = load_settings(environ={})
    with caplog.at_level(logging.WARNING):
        _exposure_warning(open_settings, "0.0.0.0")
    assert "no authentication and no network allow list" in caplog.text
    caplog.clear()
    for host in ("127.0.0.1", "::1", "localhost"):
        _exposure_warning(open_settings, host)
    guarded, _ = load_settings(environ={"REGISTRY_MIRROR_ACCESS_ALLOW": "10.0.0.0/8"})
    _exposure_warning(guarded, "0.0.0.0")
    assert caplog.text == ""
