"""Pull-through behaviour with a real client (skopeo), a real upstream and the real mirror."""

from __future__ import annotations

import hashlib
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import MirrorFactory
from tests.support.images import MANIFEST_ACCEPT, PushedImage, push_image, push_index
from tests.support.mirror import MirrorProcess, assert_log_quiet
from tests.support.oci import assert_oci_error
from tests.support.registry import RegistryProcess

BLOB_GET = r"^/v2/.*/blobs/sha256:"


def skopeo_dir(host: str, ref: str, dest: Path, *, all_platforms: bool = False) -> dict[str, bytes]:
    """``skopeo copy docker://HOST/REF dir:DEST`` (keeps manifests byte for byte); returns
    every file skopeo wrote by name (``manifest.json`` and the blobs by hex digest)."""
    args = ["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false", "--retry-times=0"]
    if all_platforms:
        args.append("--all")
    proc = subprocess.run(
        [*args, f"docker://{host}/{ref}", f"dir:{dest}"],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return {p.name: p.read_bytes() for p in dest.iterdir() if p.name != "version"}


def assert_same_image(files: dict[str, bytes], image: PushedImage) -> None:
    assert files["manifest.json"] == image.manifest
    for digest, data in image.blobs.items():
        hex_ = digest.split(":")[1]
        assert hashlib.sha256(files[hex_]).hexdigest() == hex_
        assert files[hex_] == data


def cached_blobs(mirror: MirrorProcess) -> set[str]:
    return {p.name for p in (mirror.root / "blobs").rglob("*") if p.is_file()}


def test_skopeo_pull_is_byte_identical_and_second_pull_downloads_nothing(
    upstream: RegistryProcess, any_mirror: MirrorProcess, tmp_path: Path
) -> None:
    """Over plain HTTP and over the mirror's own TLS: the second pull is all cache hits."""
    mirror = any_mirror
    image = push_image(upstream.url, "library/app", "1.0", layers=[100_000, 2_000_000, 500_000])
    upstream.clear_log()
    first = skopeo_dir(mirror.host, "library/app:1.0", tmp_path / "first")
    assert_same_image(first, image)
    for digest in image.blobs:
        assert upstream.count("GET", rf"/blobs/{digest}$") == 1, digest
    assert {d.split(":")[1] for d in image.blobs} <= cached_blobs(mirror)

    upstream.clear_log()
    second = skopeo_dir(mirror.host, "library/app:1.0", tmp_path / "second")
    assert_same_image(second, image)
    assert upstream.count("GET", BLOB_GET) == 0
    assert upstream.count("GET", r"/manifests/") == 0  # the tag was checked with a HEAD only
    assert upstream.count("HEAD", r"^/v2/library/app/manifests/1\.0$") >= 1


def test_sixteen_concurrent_cold_pulls_download_each_blob_once(
    upstream: RegistryProcess, mirror: MirrorProcess, tmp_path: Path
) -> None:
    image = push_image(upstream.url, "library/big", "v1", layers=[3_000_000, 6_000_000, 200_000])
    upstream.clear_log()
    with ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(
                lambda i: skopeo_dir(mirror.host, "library/big:v1", tmp_path / f"pull{i}"),
                range(16),
            )
        )
    for files in results:
        assert_same_image(files, image)
    for digest in image.blobs:
        assert upstream.count("GET", rf"/blobs/{digest}$") == 1, digest
    assert upstream.count("GET", r"/manifests/") == 1


def test_multi_platform_index_pull_all(
    upstream: RegistryProcess, mirror: MirrorProcess, tmp_path: Path
) -> None:
    image = push_index(upstream.url, "library/multi", "latest", layers=[50_000, 80_000])
    files = skopeo_dir(mirror.host, "library/multi:latest", tmp_path / "all", all_platforms=True)
    assert files["manifest.json"] == image.manifest
    for digest, data in image.blobs.items():
        assert files[digest.split(":")[1]] == data
    upstream.clear_log()
    skopeo_dir(mirror.host, "library/multi:latest", tmp_path / "again", all_platforms=True)
    assert upstream.count("GET", BLOB_GET) == 0


def test_restart_keeps_the_cache_and_cleans_staging(
    upstream: RegistryProcess, mirror: MirrorProcess, tmp_path: Path
) -> None:
    image = push_image(upstream.url, "library/keep", "1", layers=[300_000])
    skopeo_dir(mirror.host, "library/keep:1", tmp_path / "a")
    mirror.stop()
    leftover = mirror.root / "staging" / "deadbeef.part"
    leftover.write_bytes(b"half a layer")
    mirror.start()
    assert not leftover.exists()
    upstream.clear_log()
    assert_same_image(skopeo_dir(mirror.host, "library/keep:1", tmp_path / "b"), image)
    assert upstream.count("GET", BLOB_GET) == 0


def test_upstream_down_cached_image_still_pulls_by_tag_and_digest(
    upstream: RegistryProcess, mirror: MirrorProcess, tmp_path: Path
) -> None:
    image = push_image(upstream.url, "library/offline", "1", layers=[200_000, 100_000])
    other = push_image(upstream.url, "library/never", "1", layers=[1000], seed=9)
    skopeo_dir(mirror.host, "library/offline:1", tmp_path / "warm")
    upstream.stop()

    assert_same_image(skopeo_dir(mirror.host, "library/offline:1", tmp_path / "tag"), image)
    by_digest = skopeo_dir(mirror.host, f"library/offline@{image.digest}", tmp_path / "digest")
    assert_same_image(by_digest, image)
    with httpx.Client(base_url=mirror.url, trust_env=False, timeout=30) as client:
        stale = client.get("/v2/library/offline/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
        assert stale.status_code == 200
        assert stale.headers["Docker-Content-Digest"] == image.digest
        missing = client.get("/v2/library/never/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
        assert_oci_error(missing, 503, "UNAVAILABLE")
        blob = client.get(f"/v2/library/never/blobs/{other.layer_digests[0]}")
        assert blob.status_code == 503
        tags = client.get("/v2/library/offline/tags/list")
        assert tags.json() == {"name": "library/offline", "tags": ["1"]}
    assert "upstream unusable" in mirror.log()


def test_server_starts_without_any_upstream(mirror_factory: MirrorFactory) -> None:
    mirror = mirror_factory("http://127.0.0.1:9", name="lonely")  # port 9: nothing listens
    with httpx.Client(base_url=mirror.url, trust_env=False, timeout=30) as client:
        assert client.get("/v2/").status_code == 200
        response = client.get("/v2/library/x/manifests/latest")
        assert response.status_code == 503
        assert_log_quiet(mirror.log())


def test_blobs_are_stored_once_across_repositories(
    upstream: RegistryProcess, mirror: MirrorProcess, tmp_path: Path
) -> None:
    one = push_image(upstream.url, "library/one", "1", layers=[400_000], seed=5)
    two = push_image(upstream.url, "team/two", "1", layers=[400_000], seed=5)
    shared = set(one.layer_digests) & set(two.layer_digests)
    assert shared
    skopeo_dir(mirror.host, "library/one:1", tmp_path / "one")
    upstream.clear_log()
    skopeo_dir(mirror.host, "team/two:1", tmp_path / "two")
    for digest in shared:
        assert upstream.count("GET", rf"/blobs/{digest}$") == 0
        assert len(list((mirror.root / "blobs").rglob(digest.split(":")[1]))) == 1


@pytest.mark.parametrize("kind", ["manifest", "blob"])
def test_concurrent_identical_requests_share_one_upstream_request(
    upstream: RegistryProcess, mirror: MirrorProcess, kind: str
) -> None:
    image = push_image(upstream.url, "library/hot", "1", layers=[5_000_000])
    digest = image.layer_digests[0]
    path = (
        "/v2/library/hot/manifests/1" if kind == "manifest" else f"/v2/library/hot/blobs/{digest}"
    )
    upstream.clear_log()

    def fetch(_: int) -> bytes:
        with httpx.Client(base_url=mirror.url, trust_env=False, timeout=60) as client:
            response = client.get(path, headers={"Accept": MANIFEST_ACCEPT})
            assert response.status_code == 200
            return response.content

    with ThreadPoolExecutor(16) as pool:
        bodies = set(pool.map(fetch, range(16)))
    assert bodies == {image.manifest if kind == "manifest" else image.blobs[digest]}
    if kind == "blob":
        assert upstream.count("GET", BLOB_GET) == 1
    else:
        assert upstream.count("GET", r"/manifests/") == 1


@pytest.mark.parametrize(
    "accept", ["*/*", "application/vnd.docker.distribution.manifest.v2+json", None]
)
def test_a_digest_is_never_negotiated_into_another_manifest(
    upstream: RegistryProcess, client: httpx.Client, accept: str | None
) -> None:
    """Only a tag is resolved for the client's platform; ``manifests/<digest of an index>``
    answers that index, whatever the ``Accept``, cold and warm, GET and HEAD."""
    index = push_index(upstream.url, "library/pinned", "1", layers=[1_000], seed=31)
    headers = {} if accept is None else {"Accept": accept}
    for _ in ("cold", "warm"):
        got = client.get(f"/v2/library/pinned/manifests/{index.digest}", headers=headers)
        assert got.status_code == 200
        assert got.content == index.manifest
        assert got.headers["Docker-Content-Digest"] == index.digest
        assert got.headers["Content-Type"] == index.media_type
        head = client.head(f"/v2/library/pinned/manifests/{index.digest}", headers=headers)
        assert head.headers["Docker-Content-Digest"] == index.digest
        assert int(head.headers["Content-Length"]) == len(index.manifest)
    # The tag still resolves to the default platform for a client that takes no index.
    by_tag = client.get(
        "/v2/library/pinned/manifests/1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert by_tag.headers["Docker-Content-Digest"] == index.children["linux/amd64"].digest
