"""Docker Engine and Kaniko pulling through the mirror: their request sequences, replayed.

Neither can run here (no Docker daemon; Kaniko runs in its own container), so the tests send
what they send, with httpx, to the real mirror in front of a real upstream.

Docker Engine, ``/etc/docker/daemon.json`` (Docker Hub images only)::

    {
      "registry-mirrors": ["http://mirror.example:5000"]
    }

(Docker uses the scheme given: ``http://`` for a plain-HTTP mirror, ``https://`` with a
certificate the daemon trusts).  ``docker pull alpine:3.20`` then sends ``GET /v2/``,
``HEAD /v2/library/alpine/manifests/3.20`` with one ``Accept`` header per manifest type,
``GET`` of the index by the digest returned, of the platform's manifest by digest, of the
config and layer blobs, and resumes an interrupted layer with ``Range: bytes=N-``.

Kaniko (``--insecure-registry`` naming the mirror, or ``--insecure-pull``, for plain HTTP)::

    /kaniko/executor --registry-mirror mirror.example:5000 --insecure-registry mirror.example:5000

Its registry library (go-containerregistry) sends one comma-joined ``Accept`` naming schema 1
as well as schema 2, OCI and index types; the mirror answers with the schema 2 / OCI manifest
(for a multi-platform tag the index, then the platform's manifest by digest).  A client
accepting *only* schema 1 gets ``404 MANIFEST_UNKNOWN`` (the mirror does not convert to schema 1).
"""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.support.images import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Media,
    push_image,
    push_index,
    referenced_blobs,
    sha256_digest,
)
from tests.support.mirror import MirrorProcess, assert_log_quiet
from tests.support.oci import error_codes
from tests.support.registry import RegistryProcess
from tests.support.waits import wait_until

SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"

DOCKER_UA = "docker/24.0.7 go/go1.20.10 git-commit/311b9ff kernel/6.1.0 os/linux arch/amd64"
# Docker Engine: one Accept header per type.
DOCKER_ACCEPT = [
    ("Accept", DOCKER_MANIFEST),
    ("Accept", DOCKER_MANIFEST_LIST),
    ("Accept", OCI_INDEX),
    ("Accept", OCI_MANIFEST),
]

KANIKO_UA = "kaniko/v1.23.2 go-containerregistry/v0.20.2"
# go-containerregistry (remote.Get): one header, comma-joined, schema 1 first.
KANIKO_ACCEPT = [
    (
        "Accept",
        ",".join(
            [
                SCHEMA1,
                SCHEMA1_SIGNED,
                DOCKER_MANIFEST,
                OCI_MANIFEST,
                DOCKER_MANIFEST_LIST,
                OCI_INDEX,
            ]
        ),
    )
]
# ... and for the platform's image of an index (remote.Image): image types only.
KANIKO_IMAGE_ACCEPT = [("Accept", ",".join([DOCKER_MANIFEST, OCI_MANIFEST]))]


def assert_api_ping(client: httpx.Client, user_agent: str) -> None:
    response = client.get("/v2/", headers={"User-Agent": user_agent})
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_docker_engine_pull_sequence(
    media: Media, upstream: RegistryProcess, any_client: httpx.Client
) -> None:
    """Over plain HTTP and over the mirror's own TLS; a second machine's pull of the same
    layers is served from the cache."""
    client = any_client
    repo = f"library/dockpull-{media}"
    index = push_index(upstream.url, repo, "1.0", layers=[200_000, 3_000_000], media=media, seed=41)
    amd = index.children["linux/amd64"]
    arm = index.children["linux/arm64"]
    upstream.clear_log()
    headers = [*DOCKER_ACCEPT, ("User-Agent", DOCKER_UA)]

    assert_api_ping(client, DOCKER_UA)

    head = client.head(f"/v2/{repo}/manifests/1.0", headers=headers)
    assert head.status_code == 200
    assert head.headers["Content-Type"] == index.media_type
    assert head.headers["Docker-Content-Digest"] == index.digest
    assert int(head.headers["Content-Length"]) == len(index.manifest)
    assert head.content == b""

    got = client.get(f"/v2/{repo}/manifests/{index.digest}", headers=headers)
    assert got.status_code == 200
    assert got.content == index.manifest
    assert got.headers["Content-Type"] == index.media_type
    assert got.headers["Docker-Content-Digest"] == index.digest == sha256_digest(got.content)

    (entry,) = [
        m
        for m in json.loads(got.content)["manifests"]
        if (m["platform"]["os"], m["platform"]["architecture"]) == ("linux", "amd64")
    ]
    assert entry["digest"] == amd.digest
    platform = client.get(f"/v2/{repo}/manifests/{entry['digest']}", headers=headers)
    assert platform.status_code == 200
    assert platform.content == amd.manifest
    assert platform.headers["Content-Type"] == amd.media_type == entry["mediaType"]
    assert platform.headers["Docker-Content-Digest"] == amd.digest

    config, small, big = referenced_blobs(platform.content)
    for digest in (config, small):
        blob = client.get(f"/v2/{repo}/blobs/{digest}", headers={"User-Agent": DOCKER_UA})
        assert blob.status_code == 200
        assert blob.content == index.blobs[digest]
        assert blob.headers["Docker-Content-Digest"] == digest

    # The big layer: the download is interrupted, then resumed where it stopped.
    data = index.blobs[big]
    cut = len(data) // 3
    received = b""
    with client.stream("GET", f"/v2/{repo}/blobs/{big}", headers={"User-Agent": DOCKER_UA}) as r:
        assert r.status_code == 200
        assert int(r.headers["Content-Length"]) == len(data)
        for chunk in r.iter_bytes():
            received += chunk
            if len(received) >= cut:
                break
    received = received[:cut]
    resumed = client.get(
        f"/v2/{repo}/blobs/{big}", headers={"Range": f"bytes={cut}-", "User-Agent": DOCKER_UA}
    )
    assert resumed.status_code == 206
    assert resumed.headers["Content-Range"] == f"bytes {cut}-{len(data) - 1}/{len(data)}"
    assert int(resumed.headers["Content-Length"]) == len(data) - cut
    assert received + resumed.content == data

    for digest in referenced_blobs(amd.manifest):
        assert upstream.count("GET", rf"/blobs/{digest}$") == 1, digest
    for digest in set(referenced_blobs(arm.manifest)) - set(referenced_blobs(amd.manifest)):
        assert upstream.count("GET", rf"/blobs/{digest}$") == 0, digest

    upstream.clear_log()
    for digest in (config, small, big):
        warm = client.get(f"/v2/{repo}/blobs/{digest}", headers={"User-Agent": DOCKER_UA})
        assert warm.status_code == 200
        assert sha256_digest(warm.content) == digest
    assert upstream.count("GET", r"/blobs/") == 0


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_kaniko_registry_mirror_gets_the_right_manifests(
    media: Media, upstream: RegistryProcess, mirror: MirrorProcess, client: httpx.Client
) -> None:
    repo = f"library/kanibase-{media}"
    index = push_index(upstream.url, repo, "multi", layers=[30_000, 50_000], media=media, seed=42)
    single = push_image(upstream.url, repo, "single", layers=[40_000], media=media, seed=43)
    headers = [*KANIKO_ACCEPT, ("User-Agent", KANIKO_UA)]

    assert_api_ping(client, KANIKO_UA)

    # A multi-platform tag: the index, then the platform's manifest by digest.
    top = client.get(f"/v2/{repo}/manifests/multi", headers=headers)
    assert top.status_code == 200
    assert top.content == index.manifest
    assert top.headers["Content-Type"] == index.media_type
    assert top.headers["Docker-Content-Digest"] == index.digest
    amd = index.children["linux/amd64"]
    child = client.get(
        f"/v2/{repo}/manifests/{amd.digest}",
        headers=[*KANIKO_IMAGE_ACCEPT, ("User-Agent", KANIKO_UA)],
    )
    assert child.status_code == 200
    assert child.content == amd.manifest
    assert child.headers["Content-Type"] == amd.media_type
    config = referenced_blobs(child.content)[0]
    blob = client.get(f"/v2/{repo}/blobs/{config}", headers={"User-Agent": KANIKO_UA})
    assert blob.content == index.blobs[config]

    # A single-platform tag: its schema 2 / OCI manifest, never a schema 1 one.
    image = client.get(f"/v2/{repo}/manifests/single", headers=headers)
    assert image.status_code == 200
    assert image.content == single.manifest
    assert image.headers["Content-Type"] == single.media_type
    assert image.headers["Docker-Content-Digest"] == single.digest
    head = client.head(f"/v2/{repo}/manifests/single", headers=headers)
    assert head.status_code == 200
    assert head.headers["Docker-Content-Digest"] == single.digest


def assert_manifest_unknown(response: httpx.Response, method: str) -> None:
    assert response.status_code == 404, (response.status_code, response.text)
    if method == "GET":
        assert error_codes(response) == ["MANIFEST_UNKNOWN"]


@pytest.mark.parametrize(
    "accept",
    [
        [("Accept", SCHEMA1_SIGNED)],
        [("Accept", SCHEMA1)],
        [("Accept", f"{SCHEMA1_SIGNED}, {SCHEMA1}")],
        [("Accept", SCHEMA1_SIGNED), ("Accept", SCHEMA1)],
    ],
    ids=["prettyjws", "v1json", "both-joined", "both-separate"],
)
def test_schema1_only_client_gets_manifest_unknown_not_5xx(
    accept: list[tuple[str, str]],
    upstream: RegistryProcess,
    mirror: MirrorProcess,
    client: httpx.Client,
) -> None:
    index = push_index(upstream.url, "library/oldclient", "multi", layers=[1000], seed=44)
    single = push_image(upstream.url, "library/oldclient", "single", layers=[1000], seed=45)
    refs = ["multi", "single", index.digest, single.digest]

    for rounds in ("cold", "warm"):
        for ref in refs:
            for method in ("GET", "HEAD"):
                response = client.request(
                    method, f"/v2/library/oldclient/manifests/{ref}", headers=accept
                )
                assert_manifest_unknown(response, method)
        if rounds == "cold":  # cache everything, then ask again
            for ref in refs:
                ok = client.get(f"/v2/library/oldclient/manifests/{ref}", headers=KANIKO_ACCEPT)
                assert ok.status_code == 200
    assert re.findall(r'HTTP/1\.1" 5\d\d ', mirror.log()) == []
    assert_log_quiet(mirror.log())


def test_access_log_records_the_bytes_of_every_layer_served(
    upstream: RegistryProcess, mirror: MirrorProcess, client: httpx.Client
) -> None:
    """Operators count pulled bytes from the access log: a layer answered from the cache (the
    second pull) must be logged with its size, as the first (streamed while downloading) is."""
    image = push_image(upstream.url, "library/logbytes", "1", layers=[1_500_000], seed=46)
    (layer,) = image.layer_digests
    size = len(image.blobs[layer])
    for _ in range(2):
        response = client.get(f"/v2/library/logbytes/blobs/{layer}")
        assert response.status_code == 200
        assert len(response.content) == size
    pattern = rf'"GET /v2/library/logbytes/blobs/{layer} HTTP/1\.1" 200 (\d+) '
    # The line is written just after the last byte is sent.
    wait_until(lambda: len(re.findall(pattern, mirror.log())) >= 2, 5, message=mirror.log)
    logged = [int(n) for n in re.findall(pattern, mirror.log())]
    assert len(logged) == 2, mirror.log()
    assert logged == [size, size]
