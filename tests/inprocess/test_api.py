"""The distribution API's read side, through HTTP, over in-memory seams."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from registry_mirror.media_types import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from registry_mirror.mirror import UpstreamEntry
from registry_mirror.reference import Digest
from tests.inprocess.harness import API_VERSION, InProcessMirror, StartMirror, error_codes
from tests.support.fakes import FakeUpstream, make_image, make_index

Mirror = Callable[[], AbstractAsyncContextManager[InProcessMirror]]

IMAGE_ACCEPT = {"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"}
ALL_ACCEPT = {"Accept": f"{OCI_INDEX}, {DOCKER_LIST}, {OCI_MANIFEST}, {DOCKER_MANIFEST}"}


async def test_base_endpoint(mirror: Mirror) -> None:
    async with mirror() as m:
        for path in ("/v2/", "/v2"):
            response = await m.client.get(path)
            assert response.status == 200
            assert response.headers[API_VERSION[0]] == API_VERSION[1]
            assert await response.json() == {}
        head = await m.client.head("/v2/")
        assert head.status == 200
        assert head.headers[API_VERSION[0]] == API_VERSION[1]
        missing = await m.client.get("/v2/nothing/here")
        assert missing.status == 404
        assert missing.headers[API_VERSION[0]] == API_VERSION[1]
        assert await error_codes(missing) == ["NOT_FOUND"]


async def test_manifest_by_tag_get_and_head(mirror: Mirror, upstream: FakeUpstream) -> None:
    image = upstream.put_image("library/alpine", "3.20")
    async with mirror() as m:
        path = "/v2/alpine/manifests/3.20"  # Docker Hub's official images: library/
        response = await m.client.get(path, headers=IMAGE_ACCEPT)
        assert response.status == 200
        assert await response.read() == image.manifest
        assert response.headers["Content-Type"] == OCI_MANIFEST
        assert response.headers["Content-Length"] == str(len(image.manifest))
        assert response.headers["Docker-Content-Digest"] == str(image.digest)
        assert response.headers["ETag"] == f'"{image.digest}"'
        head = await m.client.head(path, headers=IMAGE_ACCEPT)
        assert head.status == 200
        assert await head.read() == b""
        for name in ("Content-Type", "Content-Length", "Docker-Content-Digest", "ETag"):
            assert head.headers[name] == response.headers[name], name
        by_digest = await m.client.get(
            f"/v2/library/alpine/manifests/{image.digest}", headers=IMAGE_ACCEPT
        )
        assert by_digest.status == 200
        assert await by_digest.read() == image.manifest
        unchanged = await m.client.get(path, headers={"If-None-Match": f'"{image.digest}"'})
        assert unchanged.status == 304
        assert unchanged.headers["Docker-Content-Digest"] == str(image.digest)
        unknown = await m.client.get("/v2/alpine/manifests/nope", headers=IMAGE_ACCEPT)
        assert unknown.status == 404
        assert await error_codes(unknown) == ["MANIFEST_UNKNOWN"]
        absent = await m.client.get(f"/v2/alpine/manifests/{Digest.of(b'x')}")
        assert absent.status == 404
        assert await error_codes(absent) == ["MANIFEST_UNKNOWN"]
        assert m.store.blobs[image.digest] == image.manifest
        assert await m.index.get_tag("docker.io/library/alpine", "3.20") == image.digest


@pytest.mark.parametrize("oci", [True, False], ids=["oci", "docker"])
async def test_index_negotiation(mirror: Mirror, upstream: FakeUpstream, oci: bool) -> None:
    index = upstream.put_index("library/multi", "1", make_index("multi", oci=oci))
    amd64, arm64 = index.images["linux/amd64"], index.images["linux/arm64"]
    async with mirror() as m:
        path = "/v2/library/multi/manifests/1"
        whole = await m.client.get(path, headers=ALL_ACCEPT)
        assert whole.status == 200
        assert await whole.read() == index.manifest
        assert whole.headers["Content-Type"] == index.media_type
        assert whole.headers["Docker-Content-Digest"] == str(index.digest)
        for method in ("GET", "HEAD"):
            # A client that takes no index gets the default platform's manifest.
            one = await m.client.request(method, path, headers=IMAGE_ACCEPT)
            assert one.status == 200, method
            assert one.headers["Docker-Content-Digest"] == str(amd64.digest)
            assert one.headers["Content-Type"] == amd64.media_type
            assert one.headers["Content-Length"] == str(len(amd64.manifest))
            assert await one.read() == (amd64.manifest if method == "GET" else b"")
        other = await m.client.get(f"/v2/library/multi/manifests/{arm64.digest}")
        assert other.status == 200
        assert await other.read() == arm64.manifest


async def test_index_without_the_default_platform(mirror: Mirror, upstream: FakeUpstream) -> None:
    upstream.put_index("library/arm", "1", make_index("arm", platforms=["linux/arm64"]))
    async with mirror() as m:
        response = await m.client.get("/v2/library/arm/manifests/1", headers=IMAGE_ACCEPT)
        assert response.status == 404
        assert await error_codes(response) == ["MANIFEST_UNKNOWN"]
        assert (await m.client.get("/v2/library/arm/manifests/1", headers=ALL_ACCEPT)).status == 200


async def test_blob_get_range_and_head(mirror: Mirror, upstream: FakeUpstream) -> None:
    image = upstream.put_image("library/alpine", "3.20")
    layer = image.layers[1]
    digest = image.layer_digests[1]
    size = len(layer)
    path = f"/v2/library/alpine/blobs/{digest}"
    async with mirror() as m:
        head = await m.client.head(path)  # cold: upstream's HEAD, nothing downloaded
        assert head.status == 200
        assert head.headers["Content-Length"] == str(size)
        assert head.headers["Docker-Content-Digest"] == str(digest)
        assert await head.read() == b""
        assert upstream.count("get_blob") == 0
        assert m.store.blobs == {}
        ranged = await m.client.get(path, headers={"Range": "bytes=100-1099"})  # cold: a fill
        assert ranged.status == 206
        assert ranged.headers["Content-Range"] == f"bytes 100-1099/{size}"
        assert ranged.headers["Content-Length"] == "1000"
        assert await ranged.read() == layer[100:1100]
        whole = await m.client.get(path)
        assert whole.status == 200
        assert whole.headers["Content-Length"] == str(size)
        assert whole.headers["Docker-Content-Digest"] == str(digest)
        assert whole.headers["Content-Type"] == "application/octet-stream"
        assert whole.headers["Accept-Ranges"] == "bytes"
        assert await whole.read() == layer
        assert m.store.blobs[digest] == layer
        suffix = await m.client.get(path, headers={"Range": "bytes=-10"})  # warm
        assert suffix.status == 206
        assert suffix.headers["Content-Range"] == f"bytes {size - 10}-{size - 1}/{size}"
        assert await suffix.read() == layer[-10:]
        beyond = await m.client.get(path, headers={"Range": f"bytes={size}-"})
        assert beyond.status == 416
        assert beyond.headers["Content-Range"] == f"bytes */{size}"
        assert await error_codes(beyond) == ["BLOB_UNKNOWN"]
        warm_head = await m.client.head(path)
        assert warm_head.headers["Content-Length"] == str(size)
        assert upstream.count("get_blob") == 1
        unknown = await m.client.get(f"/v2/library/alpine/blobs/{Digest.of(b'none')}")
        assert unknown.status == 404
        assert await error_codes(unknown) == ["BLOB_UNKNOWN"]
        bad = await m.client.get("/v2/library/alpine/blobs/sha256:abc")
        assert bad.status == 400
        assert await error_codes(bad) == ["DIGEST_INVALID"]


async def test_unsatisfiable_range_on_a_cold_blob(mirror: Mirror, upstream: FakeUpstream) -> None:
    image = upstream.put_image("library/alpine", "3.20")
    digest, size = image.layer_digests[0], len(image.layers[0])
    async with mirror() as m:
        response = await m.client.get(
            f"/v2/library/alpine/blobs/{digest}", headers={"Range": f"bytes={size + 5}-"}
        )
        assert response.status == 416
        assert response.headers["Content-Range"] == f"bytes */{size}"
        assert await error_codes(response) == ["BLOB_UNKNOWN"]


async def test_tags_list_pagination(mirror: Mirror, upstream: FakeUpstream) -> None:
    image = upstream.put_image("library/alpine", "latest")
    for tag in ("3.19", "3.20", "3.21", "edge"):
        upstream.tag("library/alpine", tag, image.digest)
    async with mirror() as m:
        everything = await m.client.get("/v2/library/alpine/tags/list")
        assert everything.status == 200
        assert await everything.json() == {
            "name": "library/alpine",
            "tags": ["3.19", "3.20", "3.21", "edge", "latest"],
        }
        assert "Link" not in everything.headers
        first = await m.client.get("/v2/library/alpine/tags/list?n=2")
        assert (await first.json())["tags"] == ["3.19", "3.20"]
        assert first.headers["Link"] == '</v2/library/alpine/tags/list?last=3.20&n=2>; rel="next"'
        asked = upstream.count("list_tags")
        second = await m.client.get("/v2/library/alpine/tags/list?last=3.20&n=2")
        assert (await second.json())["tags"] == ["3.21", "edge"]
        assert second.headers["Link"] == '</v2/library/alpine/tags/list?last=edge&n=2>; rel="next"'
        third = await m.client.get("/v2/library/alpine/tags/list?last=edge&n=2")
        assert (await third.json())["tags"] == ["latest"]
        assert "Link" not in third.headers
        assert upstream.count("list_tags") == asked  # following pages: the list just read
        bad = await m.client.get("/v2/library/alpine/tags/list?n=many")
        assert bad.status == 400
        assert await error_codes(bad) == ["PAGINATION_NUMBER_INVALID"]
        unknown = await m.client.get("/v2/library/nothing/tags/list")
        assert unknown.status == 404
        assert await error_codes(unknown) == ["NAME_UNKNOWN"]


def two_registries() -> tuple[FakeUpstream, FakeUpstream, UpstreamEntry, UpstreamEntry]:
    hub, ghcr = FakeUpstream("https://hub.test"), FakeUpstream("https://ghcr.test")
    return (
        hub,
        ghcr,
        UpstreamEntry("docker.io", hub, dockerhub=True),
        UpstreamEntry("ghcr.io", ghcr, aliases=frozenset({"gh"})),
    )


async def test_namespace_routing(start_mirror: StartMirror) -> None:
    hub, ghcr, *entries = two_registries()
    on_hub = hub.put_image("owner/tool", "1", make_image("hub"))
    on_ghcr = ghcr.put_image("owner/tool", "1", make_image("ghcr"))
    async with start_mirror(*entries) as m:
        plain = await m.client.get("/v2/owner/tool/manifests/1", headers=IMAGE_ACCEPT)
        assert plain.headers["Docker-Content-Digest"] == str(on_hub.digest)
        assert "OCI-Namespace" not in plain.headers
        routed = await m.client.get("/v2/owner/tool/manifests/1?ns=ghcr.io", headers=IMAGE_ACCEPT)
        assert routed.status == 200
        assert await routed.read() == on_ghcr.manifest
        assert routed.headers["OCI-Namespace"] == "ghcr.io"
        layer = on_ghcr.layer_digests[0]
        blob = await m.client.get(f"/v2/owner/tool/blobs/{layer}?ns=ghcr.io")
        assert blob.status == 200
        assert await blob.read() == on_ghcr.layers[0]
        for prefix in ("ghcr.io", "gh"):  # a path prefix, or an alias, says the same
            again = await m.client.get(
                f"/v2/{prefix}/owner/tool/manifests/{on_ghcr.digest}", headers=IMAGE_ACCEPT
            )
            assert again.status == 200, prefix
            assert again.headers["Docker-Content-Digest"] == str(on_ghcr.digest)
        assert hub.count(repo="owner/tool") == hub.count()
        assert hub.count("get_manifest") == 1
        assert ghcr.count("get_manifest") == 1
        assert ghcr.count("get_blob") == 1
        assert hub.count("get_blob") == 0
        before = hub.count() + ghcr.count()
        for path in ("/v2/owner/tool/manifests/1?ns=quay.io", "/v2/quay.io/owner/tool/tags/list"):
            refused = await m.client.get(path)
            assert refused.status == 404, path
            assert await error_codes(refused) == ["NAME_UNKNOWN"]
        assert hub.count() + ghcr.count() == before  # an unmirrored registry: nobody asked
        ghcr.tag("owner/tool", "2", on_ghcr.digest)
        listed = await m.client.get("/v2/owner/tool/tags/list?ns=ghcr.io&n=1")
        assert await listed.json() == {"name": "owner/tool", "tags": ["1"]}
        # The next page names the registry too.
        assert listed.headers["Link"] == (
            '</v2/owner/tool/tags/list?last=1&n=1&ns=ghcr.io>; rel="next"'
        )
        assert ghcr.count("list_tags") == 1
        assert hub.count("list_tags") == 0


async def test_catalog(start_mirror: StartMirror) -> None:
    hub, ghcr, *entries = two_registries()
    hub.put_image("library/alpine", "3")
    hub.put_image("library/busybox", "1")
    ghcr.put_image("owner/tool", "1")
    async with start_mirror(*entries) as m:
        empty = await m.client.get("/v2/_catalog")
        assert await empty.json() == {"repositories": []}
        for path in (
            "/v2/alpine/manifests/3",
            "/v2/library/busybox/manifests/1",
            "/v2/ghcr.io/owner/tool/manifests/1",
        ):
            assert (await m.client.get(path, headers=IMAGE_ACCEPT)).status == 200, path
        listed = await m.client.get("/v2/_catalog")
        assert await listed.json() == {
            "repositories": ["ghcr.io/owner/tool", "library/alpine", "library/busybox"]
        }
        first = await m.client.get("/v2/_catalog?n=2")
        assert (await first.json())["repositories"] == ["ghcr.io/owner/tool", "library/alpine"]
        assert first.headers["Link"] == '</v2/_catalog?last=library%2Falpine&n=2>; rel="next"'
        rest = await m.client.get("/v2/_catalog?n=2&last=library/alpine")
        assert (await rest.json())["repositories"] == ["library/busybox"]
        assert "Link" not in rest.headers


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v2/library/alpine/manifests/3.20"),
        ("DELETE", "/v2/library/alpine/manifests/3.20"),
        ("POST", "/v2/library/alpine/blobs/uploads/"),
        ("PATCH", "/v2/library/alpine/blobs/uploads/some-session"),
        ("PUT", "/v2/library/alpine/blobs/uploads/some-session?digest=sha256:00"),
        ("DELETE", f"/v2/library/alpine/blobs/{Digest.of(b'x')}"),
        ("DELETE", "/v2/_catalog"),
        ("POST", "/v2/"),
    ],
)
async def test_writes_are_refused(
    mirror: Mirror, upstream: FakeUpstream, method: str, path: str
) -> None:
    upstream.put_image("library/alpine", "3.20")
    async with mirror() as m:
        response = await m.client.request(method, path, data=json.dumps({"x": 1}))
        assert response.status == 405
        assert response.headers[API_VERSION[0]] == API_VERSION[1]
        assert await error_codes(response) == ["UNSUPPORTED"]
        assert m.store.blobs == {}
        assert upstream.count() == 0
