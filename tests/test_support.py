"""Tests of the test support itself, against the real distribution registry and skopeo."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from registry_mirror.reference import parse_digest
from registry_mirror.storage.filesystem import FilesystemBlobStore
from tests.support.images import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Media,
    get_blob,
    get_manifest,
    layer_diff_id,
    make_client,
    make_layer,
    push_image,
    push_index,
    referenced_blobs,
    sha256_digest,
)
from tests.support.mirror import LOG_ALARMS, assert_log_quiet
from tests.support.oci import assert_oci_error, error_code, error_codes, error_detail
from tests.support.ports import free_port
from tests.support.registry import (
    LoggedRequest,
    RegistryError,
    RegistryProcess,
    parse_access_log_line,
    registry_binary,
)
from tests.support.skopeo import skopeo_copy, skopeo_inspect_raw
from tests.support.store import blob_file, blobs_dir, staging_dir
from tests.support.waits import wait_until, wait_until_async

pytestmark = pytest.mark.skipif(
    registry_binary() is None, reason="docker-registry (distribution) is not installed"
)

BLOB_GET = r"/blobs/sha256:[0-9a-f]{64}$"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path / "registry") as reg:
        yield reg


def _oci_layout_blobs(layout: Path) -> set[str]:
    return {f"sha256:{p.name}" for p in (layout / "blobs" / "sha256").iterdir()}


# ---------------------------------------------------------------------- pure helpers


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_wait_until_returns_the_first_true_value_or_fails_with_its_message() -> None:
    answers = iter([0, None, "ready"])
    assert wait_until(lambda: next(answers), 5, interval=0.001) == "ready"
    with pytest.raises(AssertionError, match=r"^never \(waited 0.05s\)$"):
        wait_until(lambda: False, 0.05, interval=0.01, message=lambda: "never")

    async def scenario() -> None:
        event = asyncio.Event()
        asyncio.get_running_loop().call_later(0.02, event.set)
        assert await wait_until_async(event.is_set, 5, interval=0.005)
        with pytest.raises(AssertionError, match="condition not reached"):
            await wait_until_async(lambda: False, 0.02, interval=0.005)

    asyncio.run(scenario())


def test_oci_error_codes_accept_only_the_oci_error_shape() -> None:
    good = {"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown", "detail": None}]}
    response = httpx.Response(404, json=good)
    assert error_codes(response) == ["BLOB_UNKNOWN"]
    assert error_code(response) == "BLOB_UNKNOWN"
    assert error_detail(response) is None
    assert_oci_error(response, 404, "BLOB_UNKNOWN")
    with pytest.raises(AssertionError):
        assert_oci_error(response, 404, "MANIFEST_UNKNOWN")
    bad_bodies = [
        {"errors": []},
        {"errors": [{"code": "X", "message": "m"}]},
        {"errors": [{"code": "X", "message": "", "detail": None}]},
        {"errors": [{"code": "X", "message": "Traceback", "detail": None}]},
        {"errors": good["errors"], "extra": 1},
    ]
    for body in bad_bodies:
        with pytest.raises(AssertionError):
            error_codes(httpx.Response(500, json=body))
    with pytest.raises(AssertionError):
        error_codes(httpx.Response(500, text=json.dumps(good)))  # not served as JSON


def test_blob_files_lie_where_the_store_puts_them(tmp_path: Path) -> None:
    digest = sha256_digest(b"data")
    store = FilesystemBlobStore(tmp_path)
    assert blob_file(tmp_path, digest) == store.path_for(parse_digest(digest))
    assert blob_file(tmp_path, parse_digest(digest)) == blob_file(tmp_path, digest)
    assert blob_file(tmp_path, digest).is_relative_to(blobs_dir(tmp_path))
    assert staging_dir(tmp_path) == store.staging_dir


def test_assert_log_quiet_names_the_alarm() -> None:
    assert_log_quiet("2026-01-01 00:00:00,000 INFO registry_mirror: serving\n")
    for alarm in LOG_ALARMS:
        with pytest.raises(AssertionError, match=alarm):
            assert_log_quiet(f"... {alarm} ...")


def test_make_layer_is_deterministic_targz() -> None:
    layer = make_layer(10_000, seed=3)
    assert layer == make_layer(10_000, seed=3)
    assert layer != make_layer(10_000, seed=4)
    assert layer[:2] == b"\x1f\x8b"
    tar_bytes = gzip.decompress(layer)
    assert layer_diff_id(layer) == sha256_digest(tar_bytes)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = tar.getmembers()
        assert len(members) == 1
        assert members[0].isfile()
        assert members[0].size == 10_000
        extracted = tar.extractfile(members[0])
        assert extracted is not None
        content = extracted.read()
    # incompressible: gzip gains nothing
    assert len(layer) > len(content)
    assert len(gzip.compress(content)) > 9_900


def test_parse_access_log_line() -> None:
    line = (
        '127.0.0.1 - alice [28/Nov/2026:11:00:00 +0000] "GET /v2/a/b/blobs/sha256:ab?x=1&y=2 '
        'HTTP/1.1" 200 1234 "" "skopeo \\"quoted\\" ua"\n'
    )
    assert parse_access_log_line(line) == LoggedRequest(
        method="GET",
        path="/v2/a/b/blobs/sha256:ab",
        query="x=1&y=2",
        status=200,
        size=1234,
        user="alice",
        user_agent='skopeo "quoted" ua',
        remote="127.0.0.1",
        raw=line.rstrip("\n"),
    )
    head = parse_access_log_line(
        '127.0.0.1 - - [28/Nov/2026:11:00:00 +0000] "HEAD /v2/ HTTP/1.1" 401 - "" "ua"'
    )
    assert head is not None
    assert (head.method, head.path, head.query, head.status, head.size) == (
        "HEAD",
        "/v2/",
        "",
        401,
        0,
    )
    assert parse_access_log_line('time="..." level=info msg="response completed"') is None


# ---------------------------------------------------------------------- registry process


def test_registry_lifecycle_and_access_log(tmp_path: Path) -> None:
    reg = RegistryProcess(tmp_path / "reg")
    reg.start()
    try:
        assert reg.running
        assert reg.url == f"http://127.0.0.1:{reg.port}"
        assert reg.pid > 0
        assert reg.requests() == []  # startup probes are not reported
        with make_client() as client:
            assert client.get(f"{reg.url}/v2/").status_code == 200
            assert client.get(f"{reg.url}/v2/nope/manifests/x?a=b").status_code == 404
        reqs = reg.requests()
        assert [(r.method, r.path, r.query, r.status) for r in reqs] == [
            ("GET", "/v2/", "", 200),
            ("GET", "/v2/nope/manifests/x", "a=b", 404),
        ]
        assert reqs[0].user_agent.startswith("python-httpx/")
        assert reg.count("GET", r"/manifests/") == 1
        assert reg.count(None, r"^/v2/") == 2
        assert reg.count("GET", r"^/v2/$", status=404) == 0
        reg.clear_log()
        assert reg.requests() == []
        # stdout holds nothing but access-log lines
        lines = reg.stdout_path.read_text().splitlines()
        assert lines
        assert all(parse_access_log_line(line) is not None for line in lines)
    finally:
        reg.stop()
    assert not reg.running
    reg.stop()  # idempotent


def test_registry_start_failure_reports_stderr(tmp_path: Path) -> None:
    reg = RegistryProcess(
        tmp_path / "bad", extra_config={"storage": {"filesystem": None, "nosuchdriver": {}}}
    )
    with pytest.raises(RegistryError, match="nosuchdriver"):
        reg.start(timeout=10)
    assert not reg.running


# ---------------------------------------------------------------------- pushing images


@pytest.mark.parametrize(
    ("media", "manifest_type", "config_type", "layer_type"),
    [
        ("oci", OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP),
        ("docker", DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP),
    ],
)
def test_push_image_and_get_it_back(
    registry: RegistryProcess, media: Media, manifest_type: str, config_type: str, layer_type: str
) -> None:
    img = push_image(registry.url, "test/img", "v1", layers=[1000, 30_000], media=media, seed=5)
    assert img.media_type == manifest_type
    assert img.digest == sha256_digest(img.manifest)
    doc = json.loads(img.manifest)
    assert doc["schemaVersion"] == 2
    assert doc["mediaType"] == manifest_type
    assert doc["config"]["mediaType"] == config_type
    assert {layer["mediaType"] for layer in doc["layers"]} == {layer_type}
    assert referenced_blobs(img.manifest) == [img.config_digest, *img.layer_digests]
    assert set(img.blobs) == {img.config_digest, *img.layer_digests}

    assert img.config_digest is not None
    config = json.loads(img.blobs[img.config_digest])
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["rootfs"]["diff_ids"] == [layer_diff_id(img.blobs[d]) for d in img.layer_digests]
    assert len(config["history"]) == 2

    with make_client() as client:
        body, media_type, digest = get_manifest(client, registry.url, "test/img", "v1")
        assert (body, media_type, digest) == (img.manifest, manifest_type, img.digest)
        for blob_digest, content in img.blobs.items():
            assert get_blob(client, registry.url, "test/img", blob_digest) == content

    # deterministic: pushing again changes nothing and uploads no blob
    registry.clear_log()
    again = push_image(registry.url, "test/img", "v2", layers=[1000, 30_000], media=media, seed=5)
    assert again.digest == img.digest
    assert registry.count("POST", r"/blobs/uploads/$") == 0


@pytest.mark.parametrize(
    ("media", "index_type", "child_type"),
    [("oci", OCI_INDEX, OCI_MANIFEST), ("docker", DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)],
)
def test_push_index_and_get_it_back(
    registry: RegistryProcess, media: Media, index_type: str, child_type: str
) -> None:
    idx = push_index(registry.url, "test/multi", "latest", layers=[2000, 3000], media=media)
    assert idx.is_index
    assert idx.media_type == index_type
    assert list(idx.children) == ["linux/amd64", "linux/arm64"]
    doc = json.loads(idx.manifest)
    assert doc["mediaType"] == index_type
    platforms = [m["platform"] for m in doc["manifests"]]
    assert platforms == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
    amd = referenced_blobs(idx.children["linux/amd64"].manifest)
    arm = referenced_blobs(idx.children["linux/arm64"].manifest)
    assert amd[1] == arm[1]  # shared base layer
    assert amd[0] != arm[0]
    assert amd[2] != arm[2]
    assert set(idx.blobs) == set(amd) | set(arm)
    assert len(idx.blobs) == 5

    with make_client() as client:
        body, media_type, digest = get_manifest(client, registry.url, "test/multi", "latest")
        assert (body, media_type, digest) == (idx.manifest, index_type, idx.digest)
        for plat, (child_digest, child_media, child_body) in idx.children.items():
            assert child_media == child_type
            got = get_manifest(client, registry.url, "test/multi", child_digest)
            assert got == (child_body, child_type, child_digest)
            config = json.loads(
                get_blob(client, registry.url, "test/multi", referenced_blobs(child_body)[0])
            )
            assert f"{config['os']}/{config['architecture']}" == plat


# ---------------------------------------------------------------------- skopeo


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_skopeo_copies_image_one_get_per_blob(
    registry: RegistryProcess, tmp_path: Path, media: Media
) -> None:
    img = push_image(registry.url, "lib/app", "1.0", layers=[4096, 100_000, 10], media=media)
    registry.clear_log()
    skopeo_copy(registry.host, img.reference, tmp_path / "out")
    assert registry.count("GET", r"^/v2/lib/app" + BLOB_GET) == len(img.blobs) == 4
    assert registry.count("GET", r"^/v2/lib/app/manifests/1\.0$") == 1
    assert all(r.status == 200 for r in registry.requests())
    # skopeo converts Docker manifests (and thus rewrites the config) for an OCI layout
    assert set(img.layer_digests) <= _oci_layout_blobs(tmp_path / "out")
    assert skopeo_inspect_raw(registry.host, img.reference) == img.manifest


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_skopeo_copies_index_all_platforms(
    registry: RegistryProcess, tmp_path: Path, media: Media
) -> None:
    idx = push_index(
        registry.url,
        "lib/multi",
        "v1",
        platforms=("linux/amd64", "linux/arm64", "linux/arm/v7"),
        media=media,
    )
    assert len(idx.blobs) == 7  # shared base + 3 x (config + own layer)
    registry.clear_log()
    skopeo_copy(registry.host, idx.reference, tmp_path / "out", all_platforms=True)
    # the shared base layer is fetched once
    assert registry.count("GET", r"^/v2/lib/multi" + BLOB_GET) == len(idx.blobs)
    assert registry.count("GET", r"^/v2/lib/multi/manifests/") == 1 + len(idx.children)
    if media == "oci":  # no conversion: the layout holds exactly what was pushed
        assert _oci_layout_blobs(tmp_path / "out") == set(idx.manifests()) | set(idx.blobs)
    assert skopeo_inspect_raw(registry.host, idx.reference) == idx.manifest


def test_htpasswd_auth(tmp_path: Path) -> None:
    creds = ("alice", "s3cret")
    with RegistryProcess(tmp_path / "reg", htpasswd=creds) as reg:
        assert reg.htpasswd_path.read_text().startswith("alice:$2")
        with make_client() as anonymous:
            assert anonymous.get(f"{reg.url}/v2/").status_code == 401
        with make_client(("alice", "wrong")) as wrong:
            assert wrong.get(f"{reg.url}/v2/").status_code == 401
        img = push_image(reg.url, "private/app", "v1", auth=creds)
        with make_client(creds) as client:
            assert get_manifest(client, reg.url, "private/app", "v1")[2] == img.digest
        reg.clear_log()
        skopeo_copy(reg.host, img.reference, tmp_path / "out", creds=creds)
        assert reg.count("GET", BLOB_GET, status=200) == len(img.blobs)


def test_registry_proxy_pull_through(tmp_path: Path) -> None:
    """registry:2 as a pull-through cache of another registry (the reference behaviour)."""
    with RegistryProcess(tmp_path / "upstream") as upstream:
        img = push_image(upstream.url, "library/app", "v1", layers=[1000, 20_000])
        with RegistryProcess(tmp_path / "proxy", proxy_remoteurl=upstream.url) as proxy:
            upstream.clear_log()
            skopeo_copy(proxy.host, img.reference, tmp_path / "cold")
            upstream.wait_idle(quiet=0.3)  # the proxy stores blobs in the background
            cold = upstream.count("GET", BLOB_GET)
            # registry:2 fetches each blob at least once (in practice twice: one stream for
            # the client, one to store locally)
            assert cold >= len(img.blobs)
            assert proxy.count("GET", BLOB_GET) == len(img.blobs)

            upstream.clear_log()
            skopeo_copy(proxy.host, img.reference, tmp_path / "warm")
            upstream.wait_idle(quiet=0.2)
            assert upstream.count("GET", BLOB_GET) == 0  # warm: served from the cache
            assert upstream.count("HEAD", r"/manifests/v1$") == 1  # tags are revalidated
            assert set(img.layer_digests) <= _oci_layout_blobs(tmp_path / "warm")
