"""The outage matrix: each client flow pulls, upstream goes away, the client pulls again
from the cache; then the tag moves upstream, is pulled again the client's way, and the
next outage serves the NEW digest.

Flows: GET by tag (skopeo), HEAD by tag then by digest (containerd for real, Docker
Engine's requests replayed), Kaniko's requests replayed (GET by tag of an index, then the
platform's manifest by digest). Upstream goes away as a real outage does: the port in
front of it stops accepting connections (the fault proxy stopped).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.clients.test_docker_kaniko import (
    DOCKER_ACCEPT,
    DOCKER_UA,
    KANIKO_ACCEPT,
    KANIKO_IMAGE_ACCEPT,
    KANIKO_UA,
)
from tests.conftest import MirrorFactory
from tests.mirror.test_pull_through import assert_same_image, skopeo_dir
from tests.support.clients import require_tools
from tests.support.containerd import Containerd, running_containerd
from tests.support.faulty import FaultyProxy
from tests.support.images import (
    INDEX_MEDIA_TYPES,
    MANIFEST_ACCEPT,
    PushedImage,
    push_image,
    push_index,
    referenced_blobs,
    sha256_digest,
)
from tests.support.mirror import STALE, MirrorProcess
from tests.support.registry import RegistryProcess
from tests.support.waits import wait_until


@pytest.fixture
def mirror(proxy: FaultyProxy, mirror_factory: MirrorFactory) -> MirrorProcess:
    return mirror_factory(proxy.url)


@contextlib.contextmanager
def outage(proxy: FaultyProxy) -> Iterator[None]:
    proxy.stop()
    try:
        yield
    finally:
        proxy.start()


def wait_until_upstream_answers(client: httpx.Client, repo: str, tag: str) -> None:
    """After an outage the upstream's circuit breaker stays open for its backoff (5 s,
    doubling while probes fail): wait until a tag check reaches upstream again."""

    def answers() -> bool:
        r = client.head(f"/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
        return r.status_code == 200 and "Warning" not in r.headers

    wait_until(
        answers, 90, interval=0.5, message=f"upstream still treated as down for {repo}:{tag}"
    )


def assert_tag_answer(
    client: httpx.Client, repo: str, tag: str, digest: str, *, stale: bool
) -> None:
    for method in ("HEAD", "GET"):
        r = client.request(
            method, f"/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT}
        )
        assert r.status_code == 200, (method, r.status_code, r.text)
        assert r.headers["Docker-Content-Digest"] == digest
        assert (r.headers.get("Warning") == STALE) is stale, r.headers


# --- GET by tag: skopeo -----------------------------------------------------------------


def test_skopeo_pulls_from_the_cache_in_an_outage_and_after_the_tag_moved(
    upstream: RegistryProcess,
    proxy: FaultyProxy,
    mirror: MirrorProcess,
    client: httpx.Client,
    tmp_path: Path,
) -> None:
    repo = "library/out-skopeo"
    old = push_image(upstream.url, repo, "1", layers=[60_000], seed=81)
    skopeo_dir(mirror.host, f"{repo}:1", tmp_path / "warm")
    with outage(proxy):
        assert_same_image(skopeo_dir(mirror.host, f"{repo}:1", tmp_path / "down"), old)
        assert_tag_answer(client, repo, "1", old.digest, stale=True)
    new = push_image(upstream.url, repo, "1", layers=[70_000], seed=82)
    wait_until_upstream_answers(client, repo, "1")
    assert_same_image(skopeo_dir(mirror.host, f"{repo}:1", tmp_path / "moved"), new)
    with outage(proxy):
        assert_same_image(skopeo_dir(mirror.host, f"{repo}:1", tmp_path / "down2"), new)
        assert_tag_answer(client, repo, "1", new.digest, stale=True)


# --- HEAD by tag, then by digest: Docker Engine (replayed) ------------------------------


def docker_pull(client: httpx.Client, repo: str, tag: str, image: PushedImage) -> httpx.Response:
    """Docker Engine's pull: HEAD of the tag, the manifest by the digest it names (and the
    platform's by digest for an index), the blobs. Returns the HEAD's answer."""
    headers = [*DOCKER_ACCEPT, ("User-Agent", DOCKER_UA)]
    head = client.head(f"/v2/{repo}/manifests/{tag}", headers=headers)
    assert head.status_code == 200, head.headers
    digest = head.headers["Docker-Content-Digest"]
    assert digest == image.digest
    top = client.get(f"/v2/{repo}/manifests/{digest}", headers=headers)
    assert top.status_code == 200
    assert top.content == image.manifest
    manifest = top.content
    if top.headers["Content-Type"] in INDEX_MEDIA_TYPES:
        amd = image.children["linux/amd64"]
        child = client.get(f"/v2/{repo}/manifests/{amd.digest}", headers=headers)
        assert child.content == amd.manifest
        manifest = child.content
    for blob in referenced_blobs(manifest):
        got = client.get(f"/v2/{repo}/blobs/{blob}", headers={"User-Agent": DOCKER_UA})
        assert got.status_code == 200
        assert sha256_digest(got.content) == blob
    return head


@pytest.mark.parametrize("kind", ["image", "index"])
def test_docker_engine_pulls_from_the_cache_in_an_outage_and_after_the_tag_moved(
    kind: str, upstream: RegistryProcess, proxy: FaultyProxy, client: httpx.Client
) -> None:
    repo = f"library/out-docker-{kind}"
    push = push_image if kind == "image" else push_index
    old = push(upstream.url, repo, "1", layers=[40_000], seed=83)
    assert "Warning" not in docker_pull(client, repo, "1", old).headers
    with outage(proxy):
        assert docker_pull(client, repo, "1", old).headers["Warning"] == STALE
    new = push(upstream.url, repo, "1", layers=[50_000], seed=84)
    wait_until_upstream_answers(client, repo, "1")
    assert new.digest != old.digest
    docker_pull(client, repo, "1", new)
    with outage(proxy):
        assert docker_pull(client, repo, "1", new).headers["Warning"] == STALE
        assert_tag_answer(client, repo, "1", new.digest, stale=True)


# --- Kaniko (replayed): GET by tag of an index, the platform's manifest by digest --------


def kaniko_pull(client: httpx.Client, repo: str, tag: str, image: PushedImage) -> httpx.Response:
    top = client.get(
        f"/v2/{repo}/manifests/{tag}", headers=[*KANIKO_ACCEPT, ("User-Agent", KANIKO_UA)]
    )
    assert top.status_code == 200
    assert top.content == image.manifest
    amd = image.children["linux/amd64"]
    child = client.get(
        f"/v2/{repo}/manifests/{amd.digest}",
        headers=[*KANIKO_IMAGE_ACCEPT, ("User-Agent", KANIKO_UA)],
    )
    assert child.content == amd.manifest
    config = json.loads(child.content)["config"]["digest"]
    assert sha256_digest(client.get(f"/v2/{repo}/blobs/{config}").content) == config
    return top


def test_kaniko_pulls_from_the_cache_in_an_outage_and_after_the_tag_moved(
    upstream: RegistryProcess, proxy: FaultyProxy, client: httpx.Client
) -> None:
    repo = "library/out-kaniko"
    old = push_index(upstream.url, repo, "base", layers=[30_000], seed=85)
    kaniko_pull(client, repo, "base", old)
    with outage(proxy):
        assert kaniko_pull(client, repo, "base", old).headers["Warning"] == STALE
    new = push_index(upstream.url, repo, "base", layers=[35_000], seed=86)
    wait_until_upstream_answers(client, repo, "base")
    kaniko_pull(client, repo, "base", new)
    with outage(proxy):
        assert kaniko_pull(client, repo, "base", new).headers["Warning"] == STALE


# --- HEAD by tag, then by digest: containerd (real) -------------------------------------


FreshContainerd = Callable[[str], contextlib.AbstractContextManager[Containerd]]


@pytest.fixture
def fresh_containerd(mirror: MirrorProcess, tmp_path: Path) -> FreshContainerd:
    """``with fresh_containerd(name) as ctr``: a containerd with an empty content store,
    the mirror in its hosts.toml."""
    require_tools("containerd", "ctr")

    @contextlib.contextmanager
    def start(name: str) -> Iterator[Containerd]:
        with running_containerd(tmp_path / name) as daemon:
            daemon.mirror_to(mirror.host)
            yield daemon

    return start


def test_containerd_pulls_from_the_cache_in_an_outage_and_after_the_tag_moved(
    fresh_containerd: FreshContainerd,
    upstream: RegistryProcess,
    proxy: FaultyProxy,
    client: httpx.Client,
) -> None:
    repo = "library/out-ctr"
    ref = f"docker.io/{repo}:1"
    old = push_image(upstream.url, repo, "1", layers=[80_000, 9_000], seed=87)
    with fresh_containerd("c1") as ctr:
        ctr.pull(ref)
        assert ctr.images()[ref][1] == old.digest
        with outage(proxy):
            # The local image removed, its content gone: everything comes from the mirror.
            ctr.ctr("images", "rm", "--sync", ref)
            assert not set(old.blobs) & ctr.content()
            ctr.pull(ref)
            assert ctr.images()[ref][1] == old.digest
            assert set(old.blobs) <= ctr.content()
            assert_tag_answer(client, repo, "1", old.digest, stale=True)
    new = push_image(upstream.url, repo, "1", layers=[90_000, 9_500], seed=88)
    wait_until_upstream_answers(client, repo, "1")
    with fresh_containerd("c2") as ctr:
        ctr.pull(ref)  # resolved with HEAD, as containerd does
        assert ctr.images()[ref][1] == new.digest
    with outage(proxy), fresh_containerd("c3") as ctr:
        ctr.pull(ref)
        assert ctr.images()[ref][1] == new.digest
        assert set(new.blobs) <= ctr.content()
