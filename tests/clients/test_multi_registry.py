"""One mirror, three upstreams: real clients pulling ``docker.io``, ``ghcr.io`` and a private
registry (basic auth) through the same mirror, each from its own upstream.

The mirror's config (``registry-mirror serve --config mirror.yml``)::

    proxy:                          # the default upstream
      remoteurl: https://registry-1.docker.io
      dockerhub: true               # one-component names get library/; its name is docker.io
    upstreams:
      - name: ghcr.io
        url: https://ghcr.io
      - name: registry.example.com
        url: https://registry.example.com
        username: bob
        password: secret-pw

(In these tests the three URLs are local ``docker-registry`` processes,
``http://127.0.0.1:PORT``; the third one requires basic auth for ``bob``.)

containerd: one ``hosts.toml`` per registry, all naming the same mirror; containerd adds
``?ns=<registry>`` to every request, which selects the upstream.  ``ctr`` gets the directory
with ``--hosts-dir DIR``, the CRI plugin with ``config_path = "DIR"``::

    # DIR/docker.io/hosts.toml
    server = "https://docker.io"
    [host."http://mirror.example:5000"]
      capabilities = ["pull", "resolve"]

    # DIR/ghcr.io/hosts.toml
    server = "https://ghcr.io"
    [host."http://mirror.example:5000"]
      capabilities = ["pull", "resolve"]

    # DIR/registry.example.com/hosts.toml
    server = "https://registry.example.com"
    [host."http://mirror.example:5000"]
      capabilities = ["pull", "resolve"]

podman and skopeo (containers-registries.conf(5)): one mirror entry per registry; the default
upstream at the mirror's root, the others under their name as a path prefix (podman then asks
for ``/v2/ghcr.io/owner/image/...``)::

    [[registry]]
    prefix = "docker.io"
    location = "docker.io"
    [[registry.mirror]]
    location = "mirror.example:5000"
    insecure = true

    [[registry]]
    prefix = "ghcr.io"
    location = "ghcr.io"
    [[registry.mirror]]
    location = "mirror.example:5000/ghcr.io"
    insecure = true

    [[registry]]
    prefix = "registry.example.com"
    location = "registry.example.com"
    [[registry.mirror]]
    location = "mirror.example:5000/registry.example.com"
    insecure = true

The same name and tag on two upstreams (``docker.io/library/same:1`` and
``ghcr.io/library/same:1``) stay two images in the mirror; a layer they share is stored once and
downloaded from only one of them.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import MirrorFactory
from tests.support.clients import mirror_access_lines, registries_conf
from tests.support.containerd import Containerd
from tests.support.images import PushedImage, push_image
from tests.support.mirror import MirrorProcess
from tests.support.oci import error_code
from tests.support.podman import PodmanFactory
from tests.support.registry import RegistryProcess
from tests.support.skopeo import assert_dir_copy, skopeo_attempt
from tests.support.store import blob_file, blobs_dir
from tests.support.waits import wait_until

HUB, GHCR, EXAMPLE = "docker.io", "ghcr.io", "registry.example.com"
REGISTRIES = (HUB, GHCR, EXAMPLE)
BOB = ("bob", "secret-pw")


@dataclass
class Multi:
    """Three upstreams and the one mirror in front of them."""

    upstreams: dict[str, RegistryProcess]  # registry name -> its stand-in
    mirror: MirrorProcess
    config: Path

    def registries_conf(self) -> str:
        """podman/skopeo: every registry mirrored by path prefix (docker.io at the root)."""
        return "\n".join(
            registries_conf(
                self.mirror.host if registry == HUB else f"{self.mirror.host}/{registry}",
                prefix=registry,
            )
            for registry in REGISTRIES
        )

    def clear_logs(self) -> None:
        for upstream in self.upstreams.values():
            upstream.clear_log()


def mirror_config(hub: str, ghcr: str, example: str) -> str:
    return (
        "proxy:\n"
        f"  remoteurl: {hub}\n"
        "  dockerhub: true\n"
        "upstreams:\n"
        f"  - name: {GHCR}\n"
        f"    url: {ghcr}\n"
        f"  - name: {EXAMPLE}\n"
        f"    url: {example}\n"
        f"    username: {BOB[0]}\n"
        f"    password: {BOB[1]}\n"
    )


@pytest.fixture
def multi(tmp_path: Path, mirror_factory: MirrorFactory) -> Iterator[Multi]:
    with contextlib.ExitStack() as stack:
        upstreams = {
            HUB: stack.enter_context(RegistryProcess(tmp_path / "hub")),
            GHCR: stack.enter_context(RegistryProcess(tmp_path / "ghcr")),
            EXAMPLE: stack.enter_context(RegistryProcess(tmp_path / "example", htpasswd=BOB)),
        }
        config = tmp_path / "mirror.yml"
        config.write_text(mirror_config(*(upstreams[r].url for r in REGISTRIES)))
        mirror = mirror_factory(upstreams[HUB].url, args=["--config", str(config)])
        yield Multi(upstreams, mirror, config)


# registry -> (repository on its upstream, layer sizes, seed): no blob is shared between them.
IMAGES = {
    HUB: ("library/a", [300_000, 20_000], 51),
    GHCR: ("owner/b", [250_000, 30_000], 52),
    EXAMPLE: ("team/c", [200_000, 40_000], 53),
}


def push_three(multi: Multi) -> dict[str, PushedImage]:
    pushed = {}
    for registry, (repo, layers, seed) in IMAGES.items():
        upstream = multi.upstreams[registry]
        pushed[registry] = push_image(
            upstream.url, repo, "1", layers=layers, seed=seed, auth=upstream.auth
        )
    multi.clear_logs()
    return pushed


def reference(registry: str) -> str:
    """What a user pulls: ``docker.io/library/a:1``, ``ghcr.io/owner/b:1``..."""
    return f"{registry}/{IMAGES[registry][0]}:1"


def assert_upstreams_served_only_their_own(
    multi: Multi, images: dict[str, PushedImage], registries: tuple[str, ...] = REGISTRIES
) -> None:
    """Each upstream in ``registries`` sent its own image's blobs exactly once (and nothing of
    any other repository); the others were not asked anything."""
    for registry, upstream in multi.upstreams.items():
        requests = upstream.requests()
        if registry not in registries:
            assert requests == [], (registry, requests)
            continue
        repo = IMAGES[registry][0]
        image = images[registry]
        blob_gets = sorted(
            (r.path, r.status) for r in requests if r.method == "GET" and "/blobs/" in r.path
        )
        assert blob_gets == sorted((f"/v2/{repo}/blobs/{d}", 200) for d in image.blobs), registry
        foreign = [
            r.path for r in requests if r.path != "/v2/" and not r.path.startswith(f"/v2/{repo}/")
        ]
        assert foreign == [], (registry, foreign)


# --- containerd: hosts.toml per registry, ?ns= ----------------------------------------------


def test_containerd_pulls_three_registries_through_one_mirror_by_ns(
    multi: Multi, containerd: Containerd
) -> None:
    images = push_three(multi)
    for registry in REGISTRIES:
        containerd.mirror_to(multi.mirror.host, registry, server=f"https://{registry}")

    for registry in REGISTRIES:
        containerd.pull(reference(registry))

    listed = containerd.images()
    content = containerd.content()
    for registry in REGISTRIES:
        image = images[registry]
        assert listed[reference(registry)] == (image.media_type, image.digest), registry
        assert set(image.blobs) <= content
    assert_upstreams_served_only_their_own(multi, images)
    log = multi.mirror.log()
    for registry in REGISTRIES:
        repo = IMAGES[registry][0]
        asked = mirror_access_lines(log, f"/v2/{repo}/")
        assert asked, log
        for method, target in asked:
            assert re.search(rf"[?&]ns={re.escape(registry)}(&|$)", target), (method, target)
        paths = {(m, t.split("?")[0]) for m, t in asked}
        assert ("HEAD", f"/v2/{repo}/manifests/1") in paths
        for digest in images[registry].blobs:
            assert ("GET", f"/v2/{repo}/blobs/{digest}") in paths


# --- podman and skopeo: registries.conf, path prefixes ------------------------------------


def test_podman_pulls_three_registries_through_one_mirror_by_path_prefix(
    multi: Multi, make_podman: PodmanFactory, tmp_path: Path
) -> None:
    images = push_three(multi)
    podman = make_podman(tmp_path / "podman", multi.registries_conf())

    for registry in REGISTRIES:
        image = images[registry]
        image_id = podman.pull(reference(registry))
        assert image.config_digest is not None
        assert image_id == image.config_digest.removeprefix("sha256:"), registry
        info = podman.inspect(reference(registry))
        assert info["Digest"] == image.digest, registry
        assert info["RepoTags"] == [reference(registry)]

    assert_upstreams_served_only_their_own(multi, images)
    access = mirror_access_lines(multi.mirror.log())
    for registry in REGISTRIES:
        repo = IMAGES[registry][0]
        prefix = f"/v2/{repo}" if registry == HUB else f"/v2/{registry}/{repo}"
        assert ("GET", f"{prefix}/manifests/1") in access, registry
        for digest in images[registry].blobs:
            assert ("GET", f"{prefix}/blobs/{digest}") in access, registry
    # Nothing went to the mirror with ?ns= or under another name.
    targets = [t for _, t in access if t.startswith("/v2/") and t != "/v2/"]
    assert [t for t in targets if "?" in t] == []
    known = ("/v2/library/a/", f"/v2/{GHCR}/owner/b/", f"/v2/{EXAMPLE}/team/c/")
    assert [t for t in targets if not t.startswith(known)] == []


def skopeo_copy(
    work: Path, registries_conf: str, ref: str
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """``skopeo --registries-conf FILE copy docker://REF dir:DEST`` with HOME and TMPDIR in
    ``work``; returns (process, the registries.conf, the destination)."""
    (work / "home").mkdir(parents=True)
    (work / "tmp").mkdir()
    conf = work / "registries.conf"
    conf.write_text(registries_conf)
    dest = work / "dest"
    proc = skopeo_attempt(
        "--debug",
        "--command-timeout",
        "30s",
        "--registries-conf",
        str(conf),
        "copy",
        "--retry-times",
        "0",
        f"docker://{ref}",
        f"dir:{dest}",
        home=work / "home",
        tmp=work / "tmp",
    )
    return proc, conf, dest


def test_skopeo_copies_ghcr_image_through_registries_conf(multi: Multi, tmp_path: Path) -> None:
    images = push_three(multi)
    image = images[GHCR]

    proc, conf, dest = skopeo_copy(tmp_path / "skopeo", multi.registries_conf(), reference(GHCR))

    assert proc.returncode == 0, proc.stderr
    assert f'Loading registries configuration \\"{conf}\\"' in proc.stderr
    assert_dir_copy(dest, image)
    assert_upstreams_served_only_their_own(multi, images, registries=(GHCR,))
    access = mirror_access_lines(multi.mirror.log())
    assert ("GET", "/v2/ghcr.io/owner/b/manifests/1") in access
    for digest in image.blobs:
        assert ("GET", f"/v2/ghcr.io/owner/b/blobs/{digest}") in access


# --- the same name and tag on two upstreams -----------------------------------------------


def test_same_name_and_tag_on_two_upstreams_stay_apart_and_share_a_layer(
    multi: Multi, containerd: Containerd, tmp_path: Path
) -> None:
    hub, ghcr = multi.upstreams[HUB], multi.upstreams[GHCR]
    # The same seed and size for layer 0: a byte-identical base layer; layer 1 and the
    # config differ.
    on_hub = push_image(
        hub.url, "library/same", "1", layers=[400_000, 10_000], seed=61, labels={"from": HUB}
    )
    on_ghcr = push_image(
        ghcr.url, "library/same", "1", layers=[400_000, 20_000], seed=61, labels={"from": GHCR}
    )
    shared = on_hub.layer_digests[0]
    assert on_ghcr.layer_digests[0] == shared
    assert on_hub.digest != on_ghcr.digest
    hub_only = set(on_ghcr.blobs) - {shared}
    assert not hub_only & set(on_hub.blobs)
    multi.clear_logs()

    # skopeo: docker.io/library/same:1 -> /v2/library/same/... (the default upstream).
    proc, _, dest = skopeo_copy(
        tmp_path / "skopeo", multi.registries_conf(), "docker.io/library/same:1"
    )
    assert proc.returncode == 0, proc.stderr
    assert (dest / "manifest.json").read_bytes() == on_hub.manifest
    # containerd: ghcr.io/library/same:1 -> the very same path, with ?ns=ghcr.io.
    containerd.mirror_to(multi.mirror.host, GHCR, server=f"https://{GHCR}")
    containerd.pull("ghcr.io/library/same:1")
    assert containerd.images()["ghcr.io/library/same:1"] == (on_ghcr.media_type, on_ghcr.digest)
    assert set(on_ghcr.blobs) <= containerd.content()

    # The shared layer: downloaded from docker.io's upstream only, once, stored once.
    for digest in on_hub.blobs:
        assert hub.count("GET", rf"^/v2/library/same/blobs/{digest}$") == 1, digest
    assert ghcr.count("GET", rf"/blobs/{shared}$") == 0
    assert ghcr.count("HEAD", rf"/blobs/{shared}$") == 0
    for digest in hub_only:
        assert ghcr.count("GET", rf"^/v2/library/same/blobs/{digest}$") == 1, digest
    assert multi.upstreams[EXAMPLE].requests() == []
    access = mirror_access_lines(multi.mirror.log())
    assert ("GET", f"/v2/library/same/blobs/{shared}?ns=ghcr.io") in access
    hex_ = shared.removeprefix("sha256:")
    assert len(list(blobs_dir(multi.mirror.root).rglob(hex_))) == 1
    assert [p for p in multi.mirror.root.rglob(f"*{hex_}*") if p.is_file()] == [
        blob_file(multi.mirror.root, shared)
    ]

    # Plain HTTP agrees: the tag means a different image on each upstream, however named.
    with httpx.Client(base_url=multi.mirror.url, timeout=30, trust_env=False) as client:
        for target, expected in [
            ("/v2/library/same/manifests/1", on_hub),
            ("/v2/same/manifests/1", on_hub),
            ("/v2/docker.io/library/same/manifests/1", on_hub),
            ("/v2/library/same/manifests/1?ns=docker.io", on_hub),
            ("/v2/library/same/manifests/1?ns=ghcr.io", on_ghcr),
            ("/v2/ghcr.io/library/same/manifests/1", on_ghcr),
        ]:
            resp = client.get(target, headers={"Accept": on_hub.media_type})
            assert resp.status_code == 200, (target, resp.text)
            assert resp.headers["Docker-Content-Digest"] == expected.digest, target
            assert resp.content == expected.manifest, target
        resp = client.get("/v2/library/same/manifests/1?ns=ghcr.io")
        assert resp.headers.get("OCI-Namespace") == GHCR


def test_access_log_counts_manifest_body_bytes_whatever_the_namespace(multi: Multi) -> None:
    """The access log promises the body bytes sent (api/access_log.py).  A manifest's line must
    say its size, the same with ``?ns=`` (which adds an ``OCI-Namespace`` header) as without."""
    image = push_image(multi.upstreams[GHCR].url, "owner/sized", "1", layers=[1000], seed=71)
    targets = ["/v2/ghcr.io/owner/sized/manifests/1", "/v2/owner/sized/manifests/1?ns=ghcr.io"]
    with httpx.Client(base_url=multi.mirror.url, timeout=30, trust_env=False) as client:
        for target in targets:
            resp = client.get(target, headers={"Accept": image.media_type})
            assert resp.status_code == 200, resp.text
            assert resp.content == image.manifest

    def logged() -> dict[str, list[str]]:
        # A request's line is written once its response has left: wait for both.
        log = multi.mirror.log()
        return {
            target: re.findall(rf'"GET {re.escape(target)} HTTP/1\.1" 200 (\d+) ', log)
            for target in targets
        }

    wait_until(lambda: all(logged().values()), 10, interval=0.05)
    assert logged() == {target: [str(len(image.manifest))] for target in targets}, (
        multi.mirror.log()
    )


def test_a_digest_cached_for_one_registry_is_unknown_under_another(multi: Multi) -> None:
    """Storage is shared by digest, access never across registries: what the mirror holds
    for registry.example.com (fetched with bob's credentials) is not served under Docker
    Hub's or ghcr.io's names, by path prefix or by ?ns=. Their upstreams, which do not have
    it, are asked with a HEAD; nothing is downloaded for them, nothing leaks."""
    private = push_three(multi)[EXAMPLE]
    owner = f"/v2/{EXAMPLE}/{private.repo}"
    accept = {"Accept": private.media_type}
    with httpx.Client(base_url=multi.mirror.url, timeout=30, trust_env=False) as client:
        assert client.get(f"{owner}/manifests/1", headers=accept).content == private.manifest
        for digest, data in private.blobs.items():
            assert client.get(f"{owner}/blobs/{digest}").content == data
        multi.clear_logs()
        elsewhere = [
            ("/v2/library/a", {}),
            ("/v2/ghcr.io/owner/b", {}),
            ("/v2/owner/b", {"ns": GHCR}),
        ]
        for prefix, params in elsewhere:
            for method in ("GET", "HEAD"):
                manifest = client.request(
                    method, f"{prefix}/manifests/{private.digest}", params=params, headers=accept
                )
                assert manifest.status_code == 404, (prefix, params, method, manifest.text)
                assert private.manifest not in manifest.content
                if method == "GET":
                    assert error_code(manifest) == "MANIFEST_UNKNOWN"
                for digest, data in private.blobs.items():
                    blob = client.request(method, f"{prefix}/blobs/{digest}", params=params)
                    assert blob.status_code == 404, (prefix, params, method, digest)
                    assert data not in blob.content
                    if method == "GET":
                        assert error_code(blob) == "BLOB_UNKNOWN"
        for registry in (HUB, GHCR):
            upstream = multi.upstreams[registry]
            assert upstream.count("GET", r"/(blobs|manifests)/sha256:") == 0, registry
            assert upstream.count("HEAD", r"/blobs/sha256:") >= 1, registry
        # The owner's registry is not asked again: its content is linked there.
        assert client.get(f"{owner}/manifests/{private.digest}", headers=accept).status_code == 200
        assert multi.upstreams[EXAMPLE].count(None, r"/manifests/sha256:") == 0
