"""Storage is shared by digest, access is not: content is served under a repository only
when the index links it there or upstream confirms it there; fills and manifest fetches
are single-flighted per repository, so one repository's missing or slow digest never
fails another's clients."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import MirrorFactory
from tests.mirror.test_pull_through import skopeo_dir
from tests.support.faulty import FaultyProxy
from tests.support.images import MANIFEST_ACCEPT, PushedImage, push_image
from tests.support.mirror import MirrorProcess
from tests.support.oci import error_code
from tests.support.registry import RegistryProcess
from tests.support.waits import wait_until

ACCEPT = {"Accept": MANIFEST_ACCEPT}


@pytest.fixture
def mirror(proxy: FaultyProxy, mirror_factory: MirrorFactory) -> MirrorProcess:
    return mirror_factory(proxy.url)


def pull(client: httpx.Client, repo: str, image: PushedImage) -> None:
    manifest = client.get(f"/v2/{repo}/manifests/{image.tag}", headers=ACCEPT)
    assert manifest.status_code == 200
    assert manifest.content == image.manifest
    for digest, data in image.blobs.items():
        blob = client.get(f"/v2/{repo}/blobs/{digest}")
        assert blob.status_code == 200
        assert blob.content == data


def test_content_cached_through_one_repository_is_unknown_under_another(
    upstream: RegistryProcess, proxy: FaultyProxy, client: httpx.Client
) -> None:
    private = push_image(upstream.url, "acme/private", "1", layers=[40_000, 7_000], seed=61)
    push_image(upstream.url, "library/alpine", "1", layers=[5_000], seed=62)
    pull(client, "acme/private", private)  # now cached (and in the mirror's memory)
    proxy.clear_log()

    for method in ("GET", "HEAD"):
        manifest = client.request(
            method, f"/v2/library/alpine/manifests/{private.digest}", headers=ACCEPT
        )
        assert manifest.status_code == 404
        if method == "GET":
            assert error_code(manifest) == "MANIFEST_UNKNOWN"
        for digest, data in private.blobs.items():
            blob = client.request(method, f"/v2/library/alpine/blobs/{digest}")
            assert blob.status_code == 404, (method, digest)
            assert data not in blob.content
            if method == "GET":
                assert error_code(blob) == "BLOB_UNKNOWN"
    # Asked upstream under library/alpine (HEAD only: nothing downloaded for it) ...
    assert proxy.count("GET", r"^/v2/library/alpine/") == 0
    assert proxy.count("HEAD", rf"^/v2/library/alpine/blobs/{private.layer_digests[0]}$") >= 1
    # ... and the owner still gets everything from the cache.
    proxy.clear_log()
    pull(client, "acme/private", private)
    assert proxy.count("GET", r"/blobs/") == 0


def test_unlinked_content_is_not_served_when_upstream_is_down(
    upstream: RegistryProcess, proxy: FaultyProxy, client: httpx.Client
) -> None:
    """The outage answer is the one for content not cached at all (503), so it tells an
    anonymous prober nothing; the private bytes never leave."""
    private = push_image(upstream.url, "acme/secret", "1", layers=[30_000], seed=63)
    pull(client, "acme/secret", private)
    proxy.stop()
    try:
        manifest = client.get(f"/v2/library/alpine/manifests/{private.digest}", headers=ACCEPT)
        assert manifest.status_code == 503
        assert error_code(manifest) == "UNAVAILABLE"
        layer = private.layer_digests[0]
        for method in ("GET", "HEAD"):
            blob = client.request(method, f"/v2/library/alpine/blobs/{layer}")
            assert blob.status_code == 503
            assert private.blobs[layer] not in blob.content
        # The owner's repository is served from the cache all the same.
        pull(client, "acme/secret", private)
    finally:
        proxy.start()


def test_content_confirmed_upstream_is_linked_and_never_downloaded_twice(
    upstream: RegistryProcess, proxy: FaultyProxy, client: httpx.Client
) -> None:
    first = push_image(upstream.url, "team/one", "1", layers=[300_000, 20_000], seed=64)
    second = push_image(upstream.url, "team/two", "1", layers=[300_000, 20_000], seed=64)
    assert first.manifest == second.manifest
    pull(client, "team/one", first)
    proxy.clear_log()

    # By digest under another repository that has it: one HEAD, no download.
    by_digest = client.get(f"/v2/team/two/manifests/{first.digest}", headers=ACCEPT)
    assert by_digest.status_code == 200
    assert by_digest.content == second.manifest
    assert proxy.count("HEAD", rf"^/v2/team/two/manifests/{first.digest}$") == 1
    assert proxy.count("GET", r"^/v2/team/two/manifests/") == 0
    # Its layers are linked with the manifest: no HEAD, no GET per layer.
    for digest, data in second.blobs.items():
        assert client.get(f"/v2/team/two/blobs/{digest}").content == data
    assert proxy.count(None, r"^/v2/team/two/blobs/") == 0
    # Linked now: the next requests do not ask upstream at all.
    proxy.clear_log()
    assert client.get(f"/v2/team/two/manifests/{first.digest}", headers=ACCEPT).status_code == 200
    assert proxy.requests() == []


def test_links_survive_a_restart(
    upstream: RegistryProcess, proxy: FaultyProxy, mirror: MirrorProcess, tmp_path: Path
) -> None:
    image = push_image(upstream.url, "library/kept", "1", layers=[50_000], seed=65)
    skopeo_dir(mirror.host, "library/kept:1", tmp_path / "a")
    mirror.restart()
    proxy.stop()
    try:  # the links come from the index: the image is served with upstream down
        files = skopeo_dir(mirror.host, f"library/kept@{image.digest}", tmp_path / "b")
        assert files["manifest.json"] == image.manifest
    finally:
        proxy.start()


@pytest.mark.parametrize("kind", ["blob", "manifest"])
def test_a_slow_missing_digest_in_one_repository_does_not_fail_another(
    kind: str, upstream: RegistryProcess, proxy: FaultyProxy, client: httpx.Client
) -> None:
    """Repository X lacks the digest and upstream is slow to say so; concurrently it is
    legitimately fetched through repository Y: Y's client gets it, X's gets 404."""
    image = push_image(upstream.url, "library/has", "1", layers=[2_000_000], seed=66)
    push_image(upstream.url, "library/lacks", "1", layers=[1_000], seed=67)
    digest = image.layer_digests[0] if kind == "blob" else image.digest
    what = "blobs" if kind == "blob" else "manifests"
    proxy.delay("GET", rf"^/v2/library/lacks/{what}/{digest}$", 2.0)
    results: dict[str, httpx.Response] = {}

    def fetch(repo: str) -> None:
        with httpx.Client(base_url=client.base_url, timeout=60, trust_env=False) as own:
            results[repo] = own.get(f"/v2/{repo}/{what}/{digest}", headers=ACCEPT)

    slow = threading.Thread(target=fetch, args=("library/lacks",))
    slow.start()
    wait_until(lambda: proxy.count("GET", rf"^/v2/library/lacks/{what}/") == 1, interval=0.02)
    fetch("library/has")
    slow.join(30)
    assert results["library/has"].status_code == 200
    expected = image.blobs[digest] if kind == "blob" else image.manifest
    assert results["library/has"].content == expected
    assert results["library/lacks"].status_code == 404
    assert error_code(results["library/lacks"]) == (
        "BLOB_UNKNOWN" if kind == "blob" else "MANIFEST_UNKNOWN"
    )
    # Storage shared: the bytes were downloaded once, through the repository that has them.
    assert proxy.count("GET", rf"^/v2/library/has/{what}/{digest}$") == 1


def test_a_fill_in_progress_serves_another_repository_only_once_confirmed_there(
    upstream: RegistryProcess, proxy: FaultyProxy, client: httpx.Client
) -> None:
    image = push_image(upstream.url, "library/filling", "1", layers=[3_000_000], seed=68)
    push_image(upstream.url, "library/other", "1", layers=[1_000], seed=69)
    push_image(upstream.url, "library/also", "1", layers=[3_000_000], seed=68)
    (layer,) = image.layer_digests
    gate = proxy.gate("GET", rf"^/v2/library/filling/blobs/{layer}$", 100_000)
    done: dict[str, bytes] = {}

    def fetch() -> None:
        with httpx.Client(base_url=client.base_url, timeout=60, trust_env=False) as own:
            done["filling"] = own.get(f"/v2/library/filling/blobs/{layer}").content

    filler = threading.Thread(target=fetch)
    filler.start()
    try:
        gate.wait_reached()
        # The download through library/filling is under way; library/other lacks the layer.
        refused = client.get(f"/v2/library/other/blobs/{layer}")
        assert refused.status_code == 404
        assert error_code(refused) == "BLOB_UNKNOWN"
        assert client.head(f"/v2/library/other/blobs/{layer}").status_code == 404
        # library/also has it: confirmed with a HEAD, then it follows the same download.
        also: dict[str, bytes] = {}

        def follow() -> None:
            with httpx.Client(base_url=client.base_url, timeout=60, trust_env=False) as own:
                also["also"] = own.get(f"/v2/library/also/blobs/{layer}").content

        follower = threading.Thread(target=follow)
        follower.start()
        wait_until(
            lambda: proxy.count("HEAD", rf"^/v2/library/also/blobs/{layer}$") == 1, interval=0.02
        )
    finally:
        gate.release()
    filler.join(30)
    follower.join(30)
    assert done["filling"] == image.blobs[layer]
    assert also["also"] == image.blobs[layer]
    assert proxy.count("GET", rf"/blobs/{layer}$") == 1  # one download for both
