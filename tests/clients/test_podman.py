"""Podman pulling ``docker.io/...`` through the mirror, configured with a registries.conf mirror.

Configuration (containers-registries.conf(5); ``/etc/containers/registries.conf``, or the file
named by ``CONTAINERS_REGISTRIES_CONF``)::

    [[registry]]
    prefix = "docker.io"
    location = "docker.io"
    [[registry.mirror]]
    location = "mirror.example:5000"
    insecure = true          # plain HTTP, or TLS without verifying the certificate

Then ``podman pull docker.io/library/alpine:3.20`` asks the mirror first and Docker Hub only if
the mirror fails.  To keep several upstreams apart on one mirror, give the upstream an alias
(``registry-mirror serve --proxy-aliases hub``) and name it in the mirror's location::

    [[registry.mirror]]
    location = "mirror.example:5000/hub"
    insecure = true

podman then asks for ``/v2/hub/library/alpine/...``.

The tests run podman as root with everything in ``tmp_path`` (:mod:`tests.support.podman`).
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import MirrorFactory
from tests.support.clients import mirror_access_lines, registries_conf
from tests.support.images import PushedImage, push_image, push_index, referenced_blobs
from tests.support.mirror import MirrorProcess
from tests.support.podman import PodmanFactory
from tests.support.registry import RegistryProcess


def assert_blobs_fetched_once(upstream: RegistryProcess, digests: list[str]) -> None:
    for digest in digests:
        assert upstream.count("GET", rf"/blobs/{digest}$") == 1, digest


def test_podman_pulls_docker_io_through_registries_conf_mirror(
    make_podman: PodmanFactory,
    upstream: RegistryProcess,
    any_mirror: MirrorProcess,
    tmp_path: Path,
) -> None:
    """Over plain HTTP and over the mirror's own TLS (``insecure = true``: no verification)."""
    mirror = any_mirror
    image = push_image(upstream.url, "library/podapp", "1.0", layers=[300_000, 1_000_000], seed=11)
    upstream.clear_log()
    podman = make_podman(tmp_path / "podman", registries_conf(mirror.host))

    image_id = podman.pull("docker.io/library/podapp:1.0")

    assert image.config_digest is not None
    assert image_id == image.config_digest.removeprefix("sha256:")
    info = podman.inspect("docker.io/library/podapp:1.0")
    assert info["Id"] == image_id
    assert info["Digest"] == image.digest
    assert f"docker.io/library/podapp@{image.digest}" in info["RepoDigests"]
    assert info["RepoTags"] == ["docker.io/library/podapp:1.0"]
    assert_blobs_fetched_once(upstream, list(image.blobs))
    requests = mirror_access_lines(mirror.log())
    assert ("GET", "/v2/library/podapp/manifests/1.0") in requests
    for digest in image.blobs:
        assert ("GET", f"/v2/library/podapp/blobs/{digest}") in requests

    # Another machine (fresh storage) pulling the same tag: nothing downloaded upstream.
    upstream.clear_log()
    other = make_podman(tmp_path / "podman2", registries_conf(mirror.host))
    assert other.pull("docker.io/library/podapp:1.0") == image_id
    assert upstream.count("GET", r"/blobs/") == 0
    assert upstream.count("GET", r"/manifests/") == 0
    assert upstream.count("HEAD", r"^/v2/library/podapp/manifests/1\.0$") == 1


def test_podman_mirror_location_with_alias_path(
    make_podman: PodmanFactory,
    upstream: RegistryProcess,
    mirror_factory: MirrorFactory,
    tmp_path: Path,
) -> None:
    image = push_image(upstream.url, "library/aliased", "2", layers=[200_000], seed=12)
    mirror = mirror_factory(upstream.url, name="hub-mirror", args=["--proxy-aliases", "hub"])
    upstream.clear_log()
    podman = make_podman(tmp_path / "podman", registries_conf(f"{mirror.host}/hub"))

    image_id = podman.pull("docker.io/library/aliased:2")

    assert image.config_digest is not None
    assert image_id == image.config_digest.removeprefix("sha256:")
    assert podman.inspect("docker.io/library/aliased:2")["Digest"] == image.digest
    assert_blobs_fetched_once(upstream, list(image.blobs))
    api = [(m, t) for m, t in mirror_access_lines(mirror.log()) if t.startswith("/v2/")]
    assert ("GET", "/v2/hub/library/aliased/manifests/2") in api
    for digest in image.blobs:
        assert ("GET", f"/v2/hub/library/aliased/blobs/{digest}") in api
    # Everything but the /v2/ ping was asked under the alias.
    assert [t for _, t in api if t != "/v2/" and not t.startswith("/v2/hub/library/")] == []


def test_podman_pulls_arm64_child_of_multi_platform_index(
    make_podman: PodmanFactory,
    upstream: RegistryProcess,
    mirror: MirrorProcess,
    tmp_path: Path,
) -> None:
    index: PushedImage = push_index(
        upstream.url, "library/podmulti", "latest", layers=[100_000, 150_000], seed=13
    )
    arm = index.children["linux/arm64"]
    amd = index.children["linux/amd64"]
    arm_blobs = referenced_blobs(arm.manifest)
    amd_only = set(referenced_blobs(amd.manifest)) - set(arm_blobs)
    upstream.clear_log()
    podman = make_podman(tmp_path / "podman", registries_conf(mirror.host))

    image_id = podman.pull("docker.io/library/podmulti:latest", "--arch", "arm64")

    assert image_id == arm_blobs[0].removeprefix("sha256:")  # the arm64 config
    info = podman.inspect("docker.io/library/podmulti:latest")
    assert info["Architecture"] == "arm64"
    assert info["Os"] == "linux"
    assert info["Digest"] == index.digest
    assert f"docker.io/library/podmulti@{arm.digest}" in info["RepoDigests"]
    assert_blobs_fetched_once(upstream, arm_blobs)
    for digest in amd_only:
        assert upstream.count("GET", rf"/blobs/{digest}$") == 0, digest
    assert upstream.count("GET", rf"/manifests/{amd.digest}$") == 0
    requests = mirror_access_lines(mirror.log())
    assert ("GET", f"/v2/library/podmulti/manifests/{arm.digest}") in requests
