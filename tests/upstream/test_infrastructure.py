"""The mirror behind ordinary, unfriendly infrastructure, with the real pieces.

* a gzip-compressing nginx in front of the upstream registry and of its token service;
* a forward proxy (tinyproxy) that is the way out, from the environment or a setting;
* a slow upstream: many concurrent blob downloads while tags are checked;
* a hung upstream: tag checks bounded in time, then a circuit breaker, then recovery.
"""

from __future__ import annotations

import gzip
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.clients.test_outage import docker_pull
from tests.conftest import MirrorFactory
from tests.support.faulty import FaultyProxy
from tests.support.images import MANIFEST_ACCEPT, PushedImage, push_image
from tests.support.nginx import GZIP_JSON, Nginx
from tests.support.ports import free_port
from tests.support.registry import RegistryProcess
from tests.support.resources import assert_returns_to_baseline, resources
from tests.support.skopeo import skopeo_copy
from tests.support.tinyproxy import Tinyproxy
from tests.support.token_auth import TokenService

ACCEPT = {"Accept": MANIFEST_ACCEPT}
PROXY_PASSWORD = "pr0xy-s3cret"


def mirror_client(url: str, timeout: float = 30) -> httpx.Client:
    return httpx.Client(base_url=url, trust_env=False, timeout=timeout)


def pull(client: httpx.Client, image: PushedImage) -> None:
    """Manifest by tag, then every blob; every byte checked."""
    manifest = client.get(f"/v2/{image.repo}/manifests/{image.tag}", headers=ACCEPT)
    assert manifest.status_code == 200, manifest.text
    assert manifest.content == image.manifest
    for digest, data in image.blobs.items():
        blob = client.get(f"/v2/{image.repo}/blobs/{digest}")
        assert blob.status_code == 200, blob.text
        assert blob.content == data


# ---------------------------------------------------------------------- gzip reverse proxy


@pytest.fixture
def gzip_stack(tmp_path: Path) -> Iterator[tuple[Nginx, TokenService, PushedImage]]:
    """registry (token auth) and token service, both only behind one gzip-happy nginx:
    the registry's challenge names the token service through nginx too."""
    with RegistryProcess(tmp_path / "upstream") as open_registry:
        image = push_image(open_registry.url, "library/zipped", "1", layers=[300_000, 5000])
    registry_port = free_port()
    with TokenService(tmp_path / "tokens") as tokens:
        nginx = Nginx(
            tmp_path / "nginx",
            [f"http://127.0.0.1:{registry_port}", tokens.realm.removesuffix("/token")],
            http=GZIP_JSON,
        )
        config = tokens.registry_config()
        config["auth"]["token"]["realm"] = nginx.urls[1] + "/token"
        with (
            RegistryProcess(tmp_path / "upstream", port=registry_port, extra_config=config),
            nginx,
        ):
            yield nginx, tokens, image


def test_pull_through_a_gzip_reverse_proxy(
    gzip_stack: tuple[Nginx, TokenService, PushedImage],
    mirror_factory: MirrorFactory,
    tmp_path: Path,
) -> None:
    """skopeo pulls through the mirror (GET by tag), and a cold mirror serves Docker
    Engine's HEAD-then-digest pull; tokens and tag lists came gzip-compressed and were
    decoded; manifests and blobs were asked as identity and verified by digest."""
    nginx, tokens, image = gzip_stack
    mirror = mirror_factory(nginx.url)
    skopeo_copy(mirror.host, f"{image.repo}:{image.tag}", tmp_path / "copy")
    with mirror_client(mirror.url) as client:
        by_digest = client.get(f"/v2/{image.repo}/manifests/{image.digest}", headers=ACCEPT)
        assert by_digest.status_code == 200, by_digest.text
        assert by_digest.content == image.manifest
        assert by_digest.headers["Docker-Content-Digest"] == image.digest
        tags = client.get(f"/v2/{image.repo}/tags/list")
        assert tags.status_code == 200, tags.text
        assert tags.json()["tags"] == ["1"]
        pull(client, image)
    assert tokens.count(f"repository:{image.repo}:pull") >= 1
    head_first = mirror_factory(nginx.url, name="head-first")
    with mirror_client(head_first.url) as client:
        docker_pull(client, image.repo, image.tag, image)

    logged = nginx.requests()
    encoded = {(method, _kind(path)) for method, path, _, coding in logged if coding == "gzip"}
    # The proxy did compress what the mirror let it: the token and the tag list.
    assert ("GET", "token") in encoded, logged
    assert ("GET", "tags") in encoded, logged
    # Manifests and blobs went uncompressed (asked as identity), though nginx would.
    assert not {k for k in encoded if k[1] in ("manifest", "blob")}, logged
    assert {("GET", "blob"), ("GET", "manifest")} <= {(m, _kind(p)) for m, p, _, _ in logged}


def _kind(path: str) -> str:
    for kind, pattern in {
        "token": r"^/token",
        "tags": r"/tags/list",
        "manifest": r"/manifests/",
        "blob": r"/blobs/",
    }.items():
        if re.search(pattern, path):
            return kind
    return "other"


def test_manifest_compressed_against_the_request_is_decoded_and_verified(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    """A proxy that gzips a manifest although identity was asked: the mirror decodes it
    and verifies the digest on the decoded bytes; a bomb and a corrupt stream are 502s."""
    image = push_image(upstream.url, "library/squeezed", "1", layers=[1000])
    headers = {
        "Content-Type": image.media_type,
        "Content-Encoding": "gzip",
        "Docker-Content-Digest": image.digest,
    }
    with FaultyProxy(upstream.url) as proxy:
        mirror = mirror_factory(proxy.url)
        path = rf"/manifests/{image.digest}$"
        proxy.status("GET", path, 200, headers=headers, body=gzip.compress(image.manifest))
        with mirror_client(mirror.url) as client:
            r = client.get(f"/v2/{image.repo}/manifests/{image.digest}", headers=ACCEPT)
            assert r.status_code == 200, r.text
            assert r.content == image.manifest
            assert "Content-Encoding" not in r.headers

            other = push_image(upstream.url, "library/squeezed", "2", layers=[2000], seed=2)
            proxy.clear_faults()
            bomb = gzip.compress(b"{" + b" " * (64 * 1024 * 1024) + b"}")
            for body in (bomb, gzip.compress(other.manifest)[:-9]):
                proxy.status(
                    "GET", rf"/manifests/{other.digest}$", 200, headers=headers, body=body, times=1
                )
                r = client.get(f"/v2/{other.repo}/manifests/{other.digest}", headers=ACCEPT)
                assert r.status_code == 502, r.text
                assert r.json()["errors"][0]["code"] == "UNKNOWN"
    assert "Traceback" not in mirror.log()


# ---------------------------------------------------------------------- forward proxy


@pytest.fixture
def proxied_image(upstream: RegistryProcess) -> PushedImage:
    return push_image(upstream.url, "library/egress", "1", layers=[200_000, 3000])


def test_environment_proxy_with_credentials(
    upstream: RegistryProcess,
    proxied_image: PushedImage,
    mirror_factory: MirrorFactory,
    tmp_path: Path,
) -> None:
    """HTTP_PROXY (with credentials) carries every upstream request; the proxy password is
    never logged; without the credentials the proxy refuses and nothing is served."""
    with Tinyproxy(tmp_path / "proxy", auth=("egress", PROXY_PASSWORD)) as proxy:
        env = {"HTTP_PROXY": proxy.url_with_auth}
        mirror = mirror_factory(upstream.url, name="via-env", env=env)
        with mirror_client(mirror.url) as client:
            pull(client, proxied_image)
        repo = proxied_image.repo
        assert proxy.requested(f"{upstream.url}/v2/{repo}/manifests/1") >= 1
        for digest in proxied_image.blobs:
            assert proxy.requested(f"{upstream.url}/v2/{repo}/blobs/{digest}") == 1
        assert PROXY_PASSWORD not in mirror.log()
        assert "via proxy http://***@127.0.0.1" in mirror.log()

        refused = mirror_factory(upstream.url, name="no-credentials", env={"http_proxy": proxy.url})
        with mirror_client(refused.url) as client:
            r = client.get(f"/v2/{repo}/manifests/1", headers=ACCEPT)
        assert r.status_code >= 500, r.text  # the proxy's 407 is no answer from upstream


def test_no_proxy_bypasses_the_environment_proxy(
    upstream: RegistryProcess,
    proxied_image: PushedImage,
    mirror_factory: MirrorFactory,
    tmp_path: Path,
) -> None:
    with Tinyproxy(tmp_path / "proxy") as proxy:
        env = {"HTTP_PROXY": proxy.url, "NO_PROXY": "example.com,127.0.0.0/8"}
        mirror = mirror_factory(upstream.url, env=env)
        with mirror_client(mirror.url) as client:
            pull(client, proxied_image)
        assert proxy.requests() == []
        assert "via proxy" not in mirror.log()


def test_proxy_setting_per_upstream(
    upstream: RegistryProcess,
    proxied_image: PushedImage,
    mirror_factory: MirrorFactory,
    tmp_path: Path,
) -> None:
    """``--proxy-proxy`` for the default upstream; ``proxy: none`` in an ``upstreams``
    entry keeps that one direct although the environment names a proxy."""
    with Tinyproxy(tmp_path / "proxy") as proxy:
        # The same registry under another host name: one registry is configured once.
        direct_url = upstream.url.replace("127.0.0.1", "localhost")
        second = f'[{{name: direct.example, url: "{direct_url}", proxy: none, dockerhub: false}}]'
        mirror = mirror_factory(
            upstream.url,
            args=["--proxy-proxy", proxy.url, "--upstreams", second],
            env={"HTTP_PROXY": "http://127.0.0.1:9"},  # nothing listens there
        )
        with mirror_client(mirror.url) as client:
            pull(client, proxied_image)
            assert proxy.requested(f"/v2/{proxied_image.repo}/manifests/1") >= 1
            before = len(proxy.requests())
            r = client.get(f"/v2/direct.example/{proxied_image.repo}/manifests/1", headers=ACCEPT)
            assert r.status_code == 200, r.text
        assert len(proxy.requests()) == before


# ---------------------------------------------------------------------- slow upstream

DOWNLOADS = 36  # more than the 32 connections per host of a pool


def test_tag_checks_do_not_wait_behind_slow_downloads(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    """36 blob downloads held mid-body by the upstream (32 hold every connection of the
    blob pool, 4 wait for one, longer than the connect timeout): a tag check still answers
    at once, and when the upstream goes on every download completes, byte for byte."""
    image = push_image(upstream.url, "library/slow", "1", layers=[20_000] * DOWNLOADS)
    with FaultyProxy(upstream.url) as proxy:
        mirror = mirror_factory(
            proxy.url,
            args=["--proxy-connect-timeout", "1s", "--limits-upstream-fetches", "100"],
        )
        with mirror_client(mirror.url) as client:  # warm the tag (and the token, if any)
            assert client.head("/v2/library/slow/manifests/1", headers=ACCEPT).status_code == 200
        baseline = resources(mirror.pid)
        gate = proxy.gate("GET", r"/blobs/sha256:", at_bytes=1000)
        results: dict[str, bytes | str] = {}

        def download(digest: str) -> None:
            with mirror_client(mirror.url, timeout=60) as client:
                r = client.get(f"/v2/library/slow/blobs/{digest}")
                results[digest] = r.content if r.status_code == 200 else f"{r.status_code} {r.text}"

        with ThreadPoolExecutor(DOWNLOADS) as pool:
            futures = [pool.submit(download, d) for d in image.layer_digests]
            deadline = time.monotonic() + 20
            while proxy.count("GET", r"/blobs/sha256:") < 32 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proxy.count("GET", r"/blobs/sha256:") >= 32
            gated_at = time.monotonic()
            with mirror_client(mirror.url) as client:
                started = time.monotonic()
                tag = client.head("/v2/library/slow/manifests/1", headers=ACCEPT)
                took = time.monotonic() - started
                listing = client.get("/v2/library/slow/tags/list")
            assert tag.status_code == 200, tag.text
            assert "Warning" not in tag.headers
            assert took < 3, f"a tag check took {took:.1f}s behind held downloads"
            assert listing.status_code == 200, listing.text
            # Hold the downloads past the connect timeout: the queued ones must not fail.
            time.sleep(max(0.0, gated_at + 2.5 - time.monotonic()))
            gate.release()
            for future in futures:
                future.result(timeout=60)
        assert proxy.count("GET", r"/blobs/sha256:") == DOWNLOADS
    for digest in image.layer_digests:
        assert results[digest] == image.blobs[digest], str(results[digest])[:200]
    # Threads: the store's bounded pools (4 + 8 + 1) grow to their bound under 36
    # concurrent fills and stay; no descriptor grows.
    assert_returns_to_baseline(mirror.pid, baseline, fd_slack=8, thread_slack=16, timeout=30)


# ---------------------------------------------------------------------- hung upstream


def test_hung_upstream_bounded_then_breaker_then_recovery(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    """An upstream that accepts connections and never answers: the cached tag is answered
    (``Warning: 110``) within the metadata timeout; after 3 failures the upstream is not
    asked at all for a while (answers at once); once it answers again, tags are
    revalidated with it again."""
    image = push_image(upstream.url, "library/hung", "1", layers=[1000])
    with FaultyProxy(upstream.url) as proxy:
        mirror = mirror_factory(proxy.url, args=["--proxy-metadata-timeout", "1s"])
        with mirror_client(mirror.url) as client:
            pull(client, image)
            baseline = resources(mirror.pid)
            hang = proxy.delay(None, r"^/v2/", 60)
            tag = "/v2/library/hung/manifests/1"
            for _ in range(3):
                started = time.monotonic()
                r = client.get(tag, headers=ACCEPT)
                took = time.monotonic() - started
                assert r.status_code == 200, r.text
                assert r.content == image.manifest
                assert r.headers.get("Warning", "").startswith("110"), r.headers
                assert took < 3, f"stale answer after {took:.1f}s"
            asked = len(proxy.requests())
            for _ in range(5):  # the breaker is open: answered without asking upstream
                started = time.monotonic()
                r = client.get(tag, headers=ACCEPT)
                assert r.status_code == 200 and r.content == image.manifest
                assert r.headers.get("Warning", "").startswith("110")
                assert time.monotonic() - started < 0.5
            assert len(proxy.requests()) == asked
            assert "marked down" in mirror.log()

            proxy.remove(hang)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                r = client.get(tag, headers=ACCEPT)
                assert r.status_code == 200 and r.content == image.manifest
                if "Warning" not in r.headers:
                    break
                time.sleep(0.25)
            assert "Warning" not in r.headers, "tags never revalidated after the upstream came back"
            assert proxy.count("HEAD", r"/manifests/1$") > asked - 3
    assert "answers again" in mirror.log()
    assert_returns_to_baseline(mirror.pid, baseline, timeout=30)


# ---------------------------------------------------------------------- negative answers


def test_not_found_and_refusals_are_remembered_briefly(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    """A 404, or an upstream refusal (403 DENIED to the client, never a 401 without a
    challenge), is asked upstream once for repeated requests within a few seconds, and
    again after that."""
    push_image(upstream.url, "library/present", "1", layers=[1000])
    with FaultyProxy(upstream.url) as proxy:
        mirror = mirror_factory(proxy.url)
        proxy.status(None, r"/library/refused/", 403)
        with mirror_client(mirror.url) as client:
            for _ in range(3):
                missing = client.get("/v2/library/present/manifests/nope", headers=ACCEPT)
                assert missing.status_code == 404
                assert missing.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
                refused = client.get("/v2/library/refused/manifests/1", headers=ACCEPT)
                assert refused.status_code == 403, refused.text
                assert refused.json()["errors"][0]["code"] == "DENIED"
                assert "WWW-Authenticate" not in refused.headers
            assert proxy.count(None, r"/manifests/nope$") == 1
            assert proxy.count(None, r"/library/refused/manifests/1$") == 1
            time.sleep(5.5)  # NEGATIVE_TTL
            assert client.get("/v2/library/present/manifests/nope").status_code == 404
            assert proxy.count(None, r"/manifests/nope$") == 2


# ---------------------------------------------------------------------- token realm policy


def test_token_realm_at_a_private_address_gets_no_credentials(
    tmp_path: Path, mirror_factory: MirrorFactory
) -> None:
    """The registry names a token realm on another host that resolves to loopback: the
    mirror sends it nothing (not even the credentials) unless private addresses are
    allowed for this upstream; then the pull works."""
    with RegistryProcess(tmp_path / "upstream") as open_registry:
        image = push_image(open_registry.url, "acme/private", "1", layers=[1000])
    with TokenService(tmp_path / "tokens", users={"alice": PROXY_PASSWORD}) as tokens:
        config = tokens.registry_config()
        config["auth"]["token"]["realm"] = tokens.realm.replace("127.0.0.1", "localhost")
        with RegistryProcess(tmp_path / "upstream", extra_config=config) as registry:
            creds = ["--proxy-username", "alice", "--proxy-password", PROXY_PASSWORD]
            refusing = mirror_factory(registry.url, name="refusing", args=creds)
            with mirror_client(refusing.url) as client:
                r = client.get("/v2/acme/private/manifests/1", headers=ACCEPT)
            assert r.status_code == 502, r.text
            assert tokens.requests == []
            assert "non-public address" in refusing.log()

            allowing = mirror_factory(
                registry.url,
                name="allowing",
                args=[*creds, "--proxy-allow-private-redirects", "true"],
            )
            with mirror_client(allowing.url) as client:
                pull(client, image)
            assert [r.user for r in tokens.requests] == ["alice"]
