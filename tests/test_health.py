"""The health probes of the real mirror process: over plain HTTP and its own TLS, with
htpasswd authentication on (the probes need no credentials); an upstream outage (still
ready, shown in ``/debug/health``); a full disk (a real small tmpfs: not ready, and ready
again once space returns)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import MirrorFactory
from tests.support.disks import fill_disk, mirror_on, tmpfs
from tests.support.faulty import FaultyProxy
from tests.support.images import MANIFEST_ACCEPT, push_image
from tests.support.mirror import STALE, MirrorProcess, assert_log_quiet
from tests.support.registry import RegistryProcess, make_htpasswd_line
from tests.support.tls import tls_args
from tests.support.waits import wait_until

FAST = ["--health-storagedriver-interval", "0.1s", "--health-storagedriver-threshold", "1"]


def status_of(client: httpx.Client, path: str) -> int:
    return client.get(path).status_code


@pytest.fixture(params=["http", "tls"])
def guarded_mirror(
    request: pytest.FixtureRequest,
    upstream: RegistryProcess,
    mirror_factory: MirrorFactory,
    tmp_path: Path,
) -> MirrorProcess:
    """The mirror with htpasswd authentication, over HTTP and over its own TLS."""
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(make_htpasswd_line("carol", "secret") + "\n")
    args = ["--auth-htpasswd-path", str(htpasswd)]
    if request.param == "tls":
        args += tls_args(tmp_path / "tls")
    return mirror_factory(upstream.url, args=args)


def test_probes_answer_without_credentials_over_http_and_tls(
    guarded_mirror: MirrorProcess,
) -> None:
    with httpx.Client(base_url=guarded_mirror.url, verify=False, trust_env=False) as client:
        assert client.get("/v2/").status_code == 401  # authentication is on
        wait_until(lambda: status_of(client, "/startupz") == 200, message=guarded_mirror.log)
        for path in ("/livez", "/readyz", "/startupz"):
            response = client.get(path)
            assert (response.status_code, response.text) == (200, "ok\n"), path
            assert response.headers["Content-Type"].startswith("text/plain")
            head = client.head(path)
            assert head.status_code == 200 and head.content == b"", path
        health = client.get("/debug/health")
        assert health.status_code == 200 and health.json() == {}
        verbose = client.get("/readyz", params={"verbose": ""})
        assert "[+]storagedriver_filesystem ok" in verbose.text
        assert "[+]index ok" in verbose.text
        assert "[+]disk ok" in verbose.text
        assert verbose.text.endswith("readyz check passed\n")
    assert_log_quiet(guarded_mirror.log())


@pytest.fixture
def proxied(proxy: FaultyProxy, mirror_factory: MirrorFactory) -> MirrorProcess:
    return mirror_factory(proxy.url)


def test_an_upstream_outage_keeps_the_mirror_ready_and_shows_in_debug_health(
    upstream: RegistryProcess, proxy: FaultyProxy, proxied: MirrorProcess
) -> None:
    image = push_image(upstream.url, "library/alpine", "3", layers=[20_000], seed=3)
    manifest = f"/v2/{image.repo}/manifests/{image.tag}"
    with httpx.Client(base_url=proxied.url, trust_env=False, timeout=30) as client:
        assert client.get(manifest, headers={"Accept": MANIFEST_ACCEPT}).status_code == 200
        proxy.stop()  # the upstream is gone

        def marked_down() -> bool:
            served = client.get(manifest, headers={"Accept": MANIFEST_ACCEPT})
            assert served.status_code == 200  # from the cache
            assert served.headers.get("Warning") == STALE
            return client.get("/debug/health").status_code == 503

        wait_until(marked_down, 30, interval=0.2, message=proxied.log)
        problems = client.get("/debug/health").json()
        assert list(problems) == ["upstream docker.io"]
        assert problems["upstream docker.io"].startswith("marked down: ")
        assert client.get("/readyz").text == "ok\n"  # the cache still serves
        detail = client.get("/debug/health", params={"verbose": ""}).json()
        state = detail["upstreams"]["docker.io"]
        assert state["up"] is False
        assert state["url"] == proxy.url
        assert state["last_success"] is not None and state["last_failure"] is not None
        assert "unreachable" in state["last_error"] or "connect" in state["last_error"].lower()
        assert detail["ready"] is True
        assert "docker.io marked down" in proxied.log()

        proxy.start()  # back (same port): the breaker's next probe closes it

        def up_again() -> bool:
            client.get(manifest, headers={"Accept": MANIFEST_ACCEPT})
            return client.get("/debug/health").status_code == 200

        wait_until(up_again, 90, interval=0.5, message=proxied.log)
        assert client.get("/debug/health").json() == {}
        assert "docker.io answers again" in proxied.log()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small", "8m") as mount:
        yield mount


def test_a_full_disk_is_not_ready_until_space_returns(
    upstream: RegistryProcess, small_disk: Path, tmp_path: Path
) -> None:
    args = [*FAST, "--health-min-free", "1MiB", *tls_args(tmp_path / "tls")]
    mirror = mirror_on(small_disk, upstream.url, args=args)
    with mirror, httpx.Client(base_url=mirror.url, verify=False, trust_env=False) as client:
        wait_until(lambda: status_of(client, "/readyz") == 200, message=mirror.log)
        filler = fill_disk(small_disk)
        wait_until(lambda: status_of(client, "/readyz") == 503, 20, message=mirror.log)

        def both_failing() -> str | None:
            body = client.get("/readyz").text
            wanted = ("[-]storagedriver_filesystem failed", "[-]disk failed")
            return body if all(w in body for w in wanted) else None

        body = wait_until(both_failing, 20, message=lambda: client.get("/readyz").text)
        assert "No space left on device" in body
        assert "below health.min_free (1.0 MiB)" in body
        assert "[-]index" not in body  # the index still answers reads
        problems = client.get("/debug/health").json()
        assert {"storagedriver_filesystem", "disk"} <= set(problems)
        assert client.get("/livez").status_code == 200
        assert client.get("/v2/").status_code == 200  # it still serves what it can

        filler.unlink()
        wait_until(lambda: status_of(client, "/readyz") == 200, 20, message=mirror.log)
        assert client.get("/debug/health").json() == {}
        log = mirror.log()
    assert "health check storagedriver_filesystem failing: " in log
    assert "health check disk passes again" in log
    assert_log_quiet(log)
