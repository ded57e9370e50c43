"""Safe to expose: client authentication and the anonymous read policy, the network allow
list behind trusted proxies, per-client and global limits, header limits and idle
connections, TLS with reload, and secrets that never leave the mirror."""

from __future__ import annotations

import base64
import json
import logging
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import httpx
import pytest

from registry_mirror.api.errors import RegistryError
from registry_mirror.api.limits import (
    CLIENT_BYTES,
    MAX_TRACKED_CLIENTS,
    REPOSITORY_BYTES,
    TABLE_BUDGET,
    Limiter,
)
from registry_mirror.cli import _exposure_warning
from registry_mirror.config import load_settings
from tests.conftest import MirrorFactory
from tests.support.faulty import FaultyProxy
from tests.support.images import MANIFEST_ACCEPT, PushedImage, push_image
from tests.support.mirror import MirrorError, MirrorProcess, assert_log_quiet
from tests.support.oci import assert_oci_error
from tests.support.registry import RegistryProcess, make_htpasswd_line
from tests.support.tls import make_cert
from tests.support.waits import wait_until

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
        assert_oci_error(ping, 401, "UNAUTHORIZED")
        assert ping.headers["WWW-Authenticate"] == 'Basic realm="Mirror Realm"'
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


def test_missing_htpasswd_file_is_a_clear_startup_error(
    upstream: RegistryProcess, tmp_path: Path
) -> None:
    mirror = MirrorProcess(
        tmp_path / "m", upstream.url, args=["--auth-htpasswd-path", str(tmp_path / "none")]
    )
    with pytest.raises(MirrorError, match="cannot read htpasswd file"):
        mirror.start(timeout=10)
    assert_log_quiet(mirror.log())


def test_network_allow_list_and_trusted_proxies(
    upstream: RegistryProcess, images: dict[str, PushedImage], mirror_factory: MirrorFactory
) -> None:
    outside = mirror_factory(upstream.url, name="outside", args=["--access-allow", "10.0.0.0/8"])
    with httpx.Client(base_url=outside.url, trust_env=False) as client:
        denied = client.get("/v2/library/public/manifests/1")
        assert_oci_error(denied, 403, "DENIED")
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
        assert_oci_error(limited, 429, "TOOMANYREQUESTS")
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
    assert_log_quiet(mirror.log())


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
        wait_until(lambda: presented_cert(mirror.port) == second_der, 5, interval=0.1)
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


def test_limits_table_is_bounded_in_memory() -> None:
    """At its bound, the per-client table holds ``max_clients`` clients (the least
    recently seen are forgotten), each with at most ``repositories`` repositories, in
    the memory the budget says: measured with tracemalloc."""
    bound = 1000
    for repositories in (0, 5, 30):
        limiter = Limiter(10, 100, 4, repositories, 600.0, failed_logins=10, max_clients=bound)
        refused = 0
        tracemalloc.start()
        try:
            for i in range(bound + 200):
                client = f"198.18.{i >> 8}.{i & 255}"
                limiter.request(client)
                for r in range(repositories + 1):  # the last one is refused
                    try:
                        limiter.repository(client, f"docker.io/library/image-{i}-{r}")
                    except RegistryError as error:
                        assert error.status == 429
                        refused += 1
                limiter.login_attempt(client)
            per_client = tracemalloc.get_traced_memory()[0] / bound
        finally:
            tracemalloc.stop()
        assert len(limiter) == bound
        assert refused == (bound + 200 if repositories else 0)  # a set never grows past it
        assert per_client <= CLIENT_BYTES + REPOSITORY_BYTES * repositories
        # The default bound keeps the whole table within the budget.
        default = Limiter(10, 100, 4, repositories, 600.0).max_clients
        assert default <= MAX_TRACKED_CLIENTS
        assert default * per_client <= TABLE_BUDGET
    assert Limiter(10, 100, 4, 5, 600.0).max_clients == MAX_TRACKED_CLIENTS
    assert Limiter(10, 100, 4, 100_000, 600.0).max_clients >= 1


def test_ipv6_clients_are_keyed_by_their_prefix() -> None:
    limiter = Limiter(0.01, 1, 0, 0, 600.0)  # one request, then 429 for 100 s
    limiter.request("2001:db8:1:2::1")
    with pytest.raises(RegistryError) as refused:
        limiter.request("2001:db8:1:2:ffff:ffff:ffff:fffe")  # the same /64
    assert refused.value.status == 429
    limiter.request("2001:db8:1:3::1")  # another /64
    limiter.request("192.0.2.1")
    with pytest.raises(RegistryError):
        limiter.request("::ffff:192.0.2.1")  # the same IPv4 client on a dual-stack socket
    per_address = Limiter(0.01, 1, 0, 0, 600.0, ipv6_prefix=128)
    per_address.request("2001:db8:1:2::1")
    per_address.request("2001:db8:1:2::2")
    assert Limiter(0.01, 1, 0, 0, 600.0, ipv6_prefix=48).key("2001:db8:1:2::1") == (
        Limiter(0.01, 1, 0, 0, 600.0, ipv6_prefix=48).key("2001:db8:1:ffff::1")
    )


def test_ipv6_clients_behind_a_proxy_share_a_bucket_per_prefix(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    mirror = mirror_factory(
        upstream.url,
        args=[
            *["--access-trusted-proxies", "127.0.0.1/32"],
            *["--limits-requests-per-second", "0.01", "--limits-burst", "1"],
        ],
    )

    def ping(client: str) -> int:
        with httpx.Client(base_url=mirror.url, trust_env=False) as c:
            return c.get("/v2/", headers={"X-Forwarded-For": client}).status_code

    assert ping("2001:db8:1:2::1") == 200
    assert ping("2001:db8:1:2::2") == 429  # another address of the same /64
    assert ping("2001:db8:1:2:a:b:c:d") == 429
    assert ping("2001:db8:1:3::1") == 200  # another /64 is another client


def test_malformed_request_log_has_no_credentials_and_one_line(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    mirror = mirror_factory(upstream.url)
    secret = base64.b64encode(b"carol:" + PASSWORD.encode())
    requests = [
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + secret + b"\x01\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization : Basic " + secret + b"\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic " + secret + b"\x7f\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nCookie: session=" + secret + b"\x01\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuth\x01orization: Basic " + secret + b"\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + secret * 300 + b"\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Bad: a\x1b[31mred\x01\r\n\r\n",
    ]
    for raw in requests:
        with socket.create_connection(("127.0.0.1", mirror.port), timeout=10) as sock:
            sock.sendall(raw)
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]
    wait_until(
        lambda: mirror.log().count("malformed request refused") >= len(requests),
        5,
        message=mirror.log,
    )
    log = mirror.log()
    assert secret.decode() not in log
    assert secret[:12].decode() not in log
    assert PASSWORD not in log
    assert "\x1b" not in log and "\x01" not in log
    refused = [line for line in log.splitlines() if "malformed request refused" in line]
    assert len(refused) == len(requests)
    for line in refused:
        assert re.match(r"^\d{4}-\d\d-\d\d [\d:,]+ WARNING aiohttp\.server: malformed", line)
    # Every line of the log is a record of its own (no continuation lines).
    assert all(re.match(r"^\d{4}-\d\d-\d\d ", line) for line in log.splitlines()), log
    assert "X-Bad: a\\x1b[31mred\\x01" in log  # what is not a secret stays readable


def test_sighup_without_tls_keeps_serving_and_reloads_the_htpasswd_file(
    upstream: RegistryProcess, htpasswd: Path, mirror_factory: MirrorFactory
) -> None:
    plain = mirror_factory(upstream.url, name="plain")
    plain.signal(signal.SIGHUP)
    wait_for_log(plain, "SIGHUP: reloaded nothing")
    assert plain.running
    with httpx.Client(base_url=plain.url, trust_env=False) as client:
        assert client.get("/v2/").status_code == 200
    assert "no log file to reopen" in plain.log()

    guarded = mirror_factory(
        upstream.url, name="guarded", args=["--auth-htpasswd-path", str(htpasswd)]
    )
    with httpx.Client(base_url=guarded.url, trust_env=False) as client:
        assert client.get("/v2/", auth=("carol", PASSWORD)).status_code == 200
        htpasswd.write_text(make_htpasswd_line("dave", "daves-pw") + "\n")
        guarded.signal(signal.SIGHUP)  # at once, not at the next look at the file
        wait_for_log(guarded, "SIGHUP: reloaded htpasswd file (1 users)")
        assert guarded.running
        assert client.get("/v2/", auth=("carol", PASSWORD)).status_code == 401
        assert client.get("/v2/", auth=("dave", "daves-pw")).status_code == 200


def wait_for_log(mirror: MirrorProcess, text: str, timeout: float = 10.0) -> None:
    def logged() -> bool:
        if text in mirror.log():
            return True
        assert mirror.running, mirror.log()
        return False

    wait_until(logged, timeout, message=mirror.log)


_DUAL_STACK_PROBE = """
import http.client, json, subprocess, sys
from pathlib import Path
from tests.support.mirror import MirrorProcess

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
results = {}
for addr in sys.argv[2:]:
    mirror = MirrorProcess(Path(sys.argv[1]) / addr.replace(":", "_"), None, args=[])
    mirror.args = ["--addr", addr.replace("PORT", str(mirror.port))]
    mirror.start()
    answers = {}
    for host in ("127.0.0.1", "::1"):
        conn = http.client.HTTPConnection(host, mirror.port, timeout=5)
        try:
            conn.request("GET", "/v2/")
            answers[host] = conn.getresponse().status
        except OSError as exc:
            answers[host] = type(exc).__name__
        finally:
            conn.close()
    mirror.stop()
    results[addr] = {"answers": answers, "log": mirror.log()}
print(json.dumps(results))
"""


def test_listen_on_every_interface_is_ipv4_and_ipv6(tmp_path: Path) -> None:
    """``:PORT`` and ``[::]:PORT`` serve IPv4 and IPv6, ``0.0.0.0:PORT`` IPv4 only. A
    wildcard listener is run in a private network namespace, where every interface is
    loopback."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare(1) to give the wildcard listener a private network")
    check = subprocess.run(
        [unshare, "-n", sys.executable, "-c", PROBE_IPV6_LOOPBACK],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if check.returncode != 0:
        pytest.skip(
            "cannot bind [::1] in a private network namespace (no unshare privilege or no"
            f" IPv6): {check.stderr.strip()[-200:]}"
        )
    run = subprocess.run(
        [unshare, "-n", sys.executable, "-c", _DUAL_STACK_PROBE, str(tmp_path), *ADDRESSES],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)
    assert results[":PORT"]["answers"] == {"127.0.0.1": 200, "::1": 200}
    assert results["[::]:PORT"]["answers"] == {"127.0.0.1": 200, "::1": 200}
    assert results["0.0.0.0:PORT"]["answers"] == {
        "127.0.0.1": 200,
        "::1": "ConnectionRefusedError",
    }
    for result in results.values():
        assert_log_quiet(result["log"])


ADDRESSES = (":PORT", "[::]:PORT", "0.0.0.0:PORT")
PROBE_IPV6_LOOPBACK = """
import socket, subprocess
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with socket.socket(socket.AF_INET6) as s:
    s.bind(("::1", 0))
"""
