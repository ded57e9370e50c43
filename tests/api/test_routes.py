"""The distribution API as clients see it: every endpoint, header, status and error body.

Real mirror process, real upstream registry (Debian's docker-registry).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import MirrorFactory
from tests.support.images import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MANIFEST_ACCEPT,
    OCI_INDEX,
    OCI_MANIFEST,
    PushedImage,
    push_image,
    push_index,
    sha256_digest,
)
from tests.support.mirror import MirrorProcess
from tests.support.oci import error_codes
from tests.support.registry import RegistryProcess
from tests.support.tls import tls_args

SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"


@pytest.fixture
def oci(upstream: RegistryProcess) -> PushedImage:
    return push_image(upstream.url, "library/alpine", "3.20", layers=[20_000, 300_000])


def test_base_endpoint(client: httpx.Client) -> None:
    for method in ("GET", "HEAD"):
        response = client.request(method, "/v2/")
        assert response.status_code == 200
        assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert client.get("/v2/").json() == {}


def test_manifest_by_tag_headers(client: httpx.Client, oci: PushedImage) -> None:
    response = client.get("/v2/library/alpine/manifests/3.20", headers={"Accept": MANIFEST_ACCEPT})
    assert response.status_code == 200
    assert response.content == oci.manifest
    assert response.headers["Content-Type"] == OCI_MANIFEST
    assert response.headers["Content-Length"] == str(len(oci.manifest))
    assert response.headers["Docker-Content-Digest"] == oci.digest
    assert response.headers["ETag"] == f'"{oci.digest}"'
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    head = client.head("/v2/library/alpine/manifests/3.20", headers={"Accept": MANIFEST_ACCEPT})
    assert head.status_code == 200
    assert head.content == b""
    for name in ("Content-Type", "Content-Length", "Docker-Content-Digest", "ETag"):
        assert head.headers[name] == response.headers[name]
    by_digest = client.get(
        f"/v2/library/alpine/manifests/{oci.digest}", headers={"Accept": OCI_MANIFEST}
    )
    assert by_digest.content == oci.manifest
    not_modified = client.get(
        f"/v2/library/alpine/manifests/{oci.digest}", headers={"If-None-Match": f'"{oci.digest}"'}
    )
    assert not_modified.status_code == 304


def test_one_component_name_means_library(client: httpx.Client, oci: PushedImage) -> None:
    response = client.get("/v2/alpine/manifests/3.20", headers={"Accept": OCI_MANIFEST})
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == oci.digest


def test_head_by_tag_does_not_download_the_manifest(
    client: httpx.Client, upstream: RegistryProcess, oci: PushedImage
) -> None:
    upstream.clear_log()
    head = client.head("/v2/library/alpine/manifests/3.20", headers={"Accept": MANIFEST_ACCEPT})
    assert head.status_code == 200
    assert head.headers["Docker-Content-Digest"] == oci.digest
    assert upstream.count("GET", r"/manifests/") == 0
    assert upstream.count("HEAD", r"^/v2/library/alpine/manifests/3\.20$") == 1


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_index_negotiation(client: httpx.Client, upstream: RegistryProcess, media: str) -> None:
    image = push_index(upstream.url, "library/multi", "v1", layers=[10_000], media=media)
    index_type = OCI_INDEX if media == "oci" else DOCKER_MANIFEST_LIST
    image_type = OCI_MANIFEST if media == "oci" else DOCKER_MANIFEST
    amd64 = image.children["linux/amd64"]

    full = client.get("/v2/library/multi/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert full.headers["Content-Type"] == index_type
    assert full.content == image.manifest
    assert full.headers["Docker-Content-Digest"] == image.digest

    # Accept as separate headers, the way Docker Engine sends them.
    separate = client.get(
        "/v2/library/multi/manifests/v1",
        headers=[("Accept", OCI_MANIFEST), ("Accept", DOCKER_MANIFEST), ("Accept", index_type)],
    )
    assert separate.headers["Docker-Content-Digest"] == image.digest

    # No index type accepted: the linux/amd64 image manifest.
    for accept in (
        [("Accept", image_type)],
        [("Accept", f"{OCI_MANIFEST}, {DOCKER_MANIFEST}")],
        [],
    ):
        only_images = client.get("/v2/library/multi/manifests/v1", headers=accept)
        assert only_images.status_code == 200, only_images.text
        assert only_images.headers["Docker-Content-Digest"] == amd64.digest
        assert only_images.headers["Content-Type"] == image_type
        assert only_images.content == amd64.manifest
        head = client.head("/v2/library/multi/manifests/v1", headers=accept)
        assert head.headers["Docker-Content-Digest"] == amd64.digest

    arm = image.children["linux/arm64"]
    child = client.get(f"/v2/library/multi/manifests/{arm.digest}", headers={"Accept": image_type})
    assert child.content == arm.manifest


def test_schema1_only_client_gets_manifest_unknown(client: httpx.Client, oci: PushedImage) -> None:
    response = client.get("/v2/library/alpine/manifests/3.20", headers={"Accept": SCHEMA1})
    assert response.status_code == 404
    assert error_codes(response) == ["MANIFEST_UNKNOWN"]
    assert "schema1" in response.json()["errors"][0]["message"]


def test_blob_get_head_and_ranges(any_client: httpx.Client, oci: PushedImage) -> None:
    """Over plain HTTP (cache hits leave by sendfile) and over the mirror's own TLS
    (cache hits stream through the TLS transport)."""
    client = any_client
    digest = oci.layer_digests[-1]
    data = oci.blobs[digest]
    url = f"/v2/library/alpine/blobs/{digest}"
    for attempt in ("cold", "warm", "hit again"):
        response = client.get(url)
        assert response.status_code == 200, attempt
        assert response.content == data
        assert response.headers["Content-Length"] == str(len(data))
        assert response.headers["Docker-Content-Digest"] == digest
        assert response.headers["Accept-Ranges"] == "bytes"
    head = client.head(url)
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["Docker-Content-Digest"] == digest

    tail = client.get(url, headers={"Range": "bytes=1000-"})
    assert tail.status_code == 206
    assert tail.content == data[1000:]
    assert tail.headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    assert tail.headers["Content-Length"] == str(len(data) - 1000)

    middle = client.get(url, headers={"Range": "bytes=10-19"})
    assert middle.status_code == 206
    assert middle.content == data[10:20]
    assert middle.headers["Content-Range"] == f"bytes 10-19/{len(data)}"

    suffix = client.get(url, headers={"Range": "bytes=-5"})
    assert suffix.content == data[-5:]

    past = client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert past.status_code == 416
    assert past.headers["Content-Range"] == f"bytes */{len(data)}"


def test_curl_cache_hit_over_tls(
    upstream: RegistryProcess, mirror_factory: MirrorFactory, tmp_path: Path
) -> None:
    image = push_image(upstream.url, "library/curled", "1", layers=[3_000_000])
    digest = image.layer_digests[0]
    mirror = mirror_factory(upstream.url, args=tls_args(tmp_path / "tls"))
    url = f"{mirror.url}/v2/library/curled/blobs/{digest}"
    for attempt in ("miss", "hit"):
        out = tmp_path / f"{attempt}.bin"
        proc = subprocess.run(
            ["curl", "-sS", "--fail", "-k", "--noproxy", "*", "-o", str(out), url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, (attempt, proc.stderr)
        assert sha256_digest(out.read_bytes()) == digest, attempt


def test_range_on_a_cold_blob(client: httpx.Client, oci: PushedImage) -> None:
    digest = oci.layer_digests[0]
    data = oci.blobs[digest]
    response = client.get(f"/v2/library/alpine/blobs/{digest}", headers={"Range": "bytes=100-"})
    assert response.status_code == 206
    assert response.content == data[100:]


def test_head_of_uncached_blob_asks_upstream_head_only(
    client: httpx.Client, upstream: RegistryProcess, oci: PushedImage, mirror: MirrorProcess
) -> None:
    digest = oci.layer_digests[-1]
    upstream.clear_log()
    head = client.head(f"/v2/library/alpine/blobs/{digest}")
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(len(oci.blobs[digest]))
    assert upstream.count("HEAD", rf"/blobs/{digest}$") == 1
    assert upstream.count("GET", r"/blobs/") == 0
    assert not list((mirror.root / "blobs").rglob(digest.split(":")[1]))


def test_unknown_things_are_404_with_spec_codes(client: httpx.Client, oci: PushedImage) -> None:
    missing = "sha256:" + "0" * 64
    cases = {
        "/v2/library/alpine/manifests/nope": "MANIFEST_UNKNOWN",
        f"/v2/library/alpine/manifests/{missing}": "MANIFEST_UNKNOWN",
        f"/v2/library/alpine/blobs/{missing}": "BLOB_UNKNOWN",
        "/v2/library/nothing/tags/list": "NAME_UNKNOWN",
        "/v2/library/alpine/whatever": "NOT_FOUND",
    }
    for path, code in cases.items():
        response = client.get(path)
        assert response.status_code == 404, path
        assert error_codes(response) == [code], path
        assert response.headers["Content-Type"].startswith("application/json")
    assert client.head(f"/v2/library/alpine/blobs/{missing}").status_code == 404


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v2/Library/Alpine/manifests/latest", "NAME_INVALID"),
        ("/v2/library/alp..ine/manifests/latest", "NAME_INVALID"),
        ("/v2/library/%2e%2e/%2e%2e/etc/manifests/latest", "NAME_INVALID"),
        ("/v2/" + "a/" * 200 + "b/manifests/latest", "NAME_INVALID"),
        ("/v2/library/alpine/manifests/-bad-tag", "TAG_INVALID"),
        ("/v2/library/alpine/manifests/" + "t" * 129, "TAG_INVALID"),
        ("/v2/library/alpine/manifests/sha256:1234", "DIGEST_INVALID"),
        ("/v2/library/alpine/blobs/sha256:" + "g" * 64, "DIGEST_INVALID"),
        ("/v2/library/alpine/blobs/md5:" + "0" * 32, "DIGEST_INVALID"),
        ("/v2/library/alpine/blobs/latest", "DIGEST_INVALID"),
    ],
)
def test_invalid_input_is_400_and_never_reaches_upstream(
    client: httpx.Client, upstream: RegistryProcess, path: str, code: str
) -> None:
    upstream.clear_log()
    response = client.get(path)
    assert response.status_code == 400, response.text
    assert error_codes(response) == [code]
    assert upstream.requests() == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v2/library/alpine/manifests/latest"),
        ("DELETE", "/v2/library/alpine/manifests/latest"),
        ("POST", "/v2/library/alpine/blobs/uploads/"),
        ("PATCH", "/v2/library/alpine/blobs/uploads/123"),
        ("PUT", "/v2/library/alpine/blobs/uploads/123?digest=sha256:" + "0" * 64),
        ("DELETE", "/v2/library/alpine/blobs/sha256:" + "0" * 64),
        ("POST", "/v2/"),
    ],
)
def test_push_and_delete_are_refused(
    client: httpx.Client, upstream: RegistryProcess, method: str, path: str
) -> None:
    upstream.clear_log()
    response = client.request(method, path, content=b"x")
    assert response.status_code == 405
    assert error_codes(response) == ["UNSUPPORTED"]
    assert upstream.requests() == []


def test_tags_list_and_pagination(client: httpx.Client, upstream: RegistryProcess) -> None:
    image = push_image(upstream.url, "library/busybox", "1.0", layers=[1000])
    for tag in ("1.1", "1.2", "2.0", "latest"):
        client_up = httpx.Client(trust_env=False)
        client_up.put(
            f"{upstream.url}/v2/library/busybox/manifests/{tag}",
            content=image.manifest,
            headers={"Content-Type": image.media_type},
        ).raise_for_status()
        client_up.close()
    full = client.get("/v2/library/busybox/tags/list")
    assert full.status_code == 200
    assert full.json() == {
        "name": "library/busybox",
        "tags": ["1.0", "1.1", "1.2", "2.0", "latest"],
    }
    page = client.get("/v2/library/busybox/tags/list", params={"n": 2})
    assert page.json()["tags"] == ["1.0", "1.1"]
    assert page.headers["Link"] == '</v2/library/busybox/tags/list?last=1.1&n=2>; rel="next"'
    following = client.get("/v2/library/busybox/tags/list", params={"n": 2, "last": "1.1"})
    assert following.json()["tags"] == ["1.2", "2.0"]
    last = client.get("/v2/library/busybox/tags/list", params={"n": 2, "last": "2.0"})
    assert last.json()["tags"] == ["latest"]
    assert "Link" not in last.headers
    bad = client.get("/v2/library/busybox/tags/list", params={"n": "many"})
    assert bad.status_code == 400
    assert error_codes(bad) == ["PAGINATION_NUMBER_INVALID"]


def test_catalog_lists_cached_repositories(client: httpx.Client, upstream: RegistryProcess) -> None:
    assert client.get("/v2/_catalog").json() == {"repositories": []}
    for name in ("library/c", "library/a", "team/b"):
        push_image(upstream.url, name, "latest", layers=[500])
        assert (
            client.get(
                f"/v2/{name}/manifests/latest", headers={"Accept": MANIFEST_ACCEPT}
            ).status_code
            == 200
        )
    everything = client.get("/v2/_catalog")
    assert everything.json() == {"repositories": ["library/a", "library/c", "team/b"]}
    first = client.get("/v2/_catalog", params={"n": 2})
    assert first.json()["repositories"] == ["library/a", "library/c"]
    assert first.headers["Link"] == '</v2/_catalog?last=library%2Fc&n=2>; rel="next"'
    rest = client.get("/v2/_catalog", params={"n": 2, "last": "library/c"})
    assert rest.json()["repositories"] == ["team/b"]
    assert "Link" not in rest.headers


def test_error_bodies_are_json_for_head_too(client: httpx.Client) -> None:
    response = client.head("/v2/library/alpine/manifests/-bad")
    assert response.status_code == 400
    assert response.content == b""
    body = client.get("/v2/library/alpine/manifests/-bad")
    assert error_codes(body) == ["TAG_INVALID"]  # the body shape, and no traceback in it


def test_registry_prefix_alias_and_containerd_namespace(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    image = push_image(upstream.url, "library/alpine", "3.20", layers=[1000])
    mirror = mirror_factory(upstream.url, name="aliased", args=["--proxy-aliases", "hub"])
    with httpx.Client(base_url=mirror.url, trust_env=False, timeout=30) as client:
        forms = [
            "/v2/hub/library/alpine/manifests/3.20",
            "/v2/hub/alpine/manifests/3.20",
            "/v2/docker.io/library/alpine/manifests/3.20",
            "/v2/library/alpine/manifests/3.20?ns=docker.io",
            "/v2/alpine/manifests/3.20",
        ]
        for path in forms:
            response = client.get(path, headers={"Accept": MANIFEST_ACCEPT})
            assert response.status_code == 200, path
            assert response.headers["Docker-Content-Digest"] == image.digest
        upstream.clear_log()
        other = client.get("/v2/library/alpine/manifests/3.20?ns=evil.example.com")
        assert other.status_code == 404
        assert error_codes(other) == ["NAME_UNKNOWN"]
        assert upstream.requests() == []
