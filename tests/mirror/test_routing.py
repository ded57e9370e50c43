"""Several upstreams in one mirror: selection by ?ns=, path prefix, alias or default;
only configured upstreams are ever contacted; allow/deny lists; per-upstream tags with
shared blobs."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from registry_mirror.config import ConfigError, load_settings
from registry_mirror.mirror import RegistryNotMirrored, RepositoryDenied, Router, UpstreamEntry
from registry_mirror.reference import parse_repo_name
from tests.conftest import MirrorFactory
from tests.support.images import MANIFEST_ACCEPT, push_image
from tests.support.mirror import MirrorProcess
from tests.support.oci import error_code
from tests.support.registry import RegistryProcess


class ConnectionRecorder:
    """A listener that only records who connects: proof that nothing left the mirror."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def ghcr(tmp_path: Path) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path / "ghcr") as registry:
        yield registry


@pytest.fixture
def recorder() -> Iterator[ConnectionRecorder]:
    listener = ConnectionRecorder()
    yield listener
    listener.close()


@pytest.fixture
def multi(
    upstream: RegistryProcess,
    ghcr: RegistryProcess,
    mirror_factory: MirrorFactory,
    tmp_path: Path,
) -> MirrorProcess:
    config = {
        "proxy": {"aliases": ["hub"], "deny": ["library/forbidden*"]},
        "upstreams": [
            {"name": "ghcr.io", "url": ghcr.url, "allow": ["owner/*", "library/*"]},
        ],
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return mirror_factory(upstream.url, name="multi", args=["--config", str(path)])


def get_manifest(mirror: MirrorProcess, path: str) -> httpx.Response:
    with httpx.Client(base_url=mirror.url, trust_env=False, timeout=30) as client:
        return client.get(path, headers={"Accept": MANIFEST_ACCEPT})


def test_every_form_that_names_a_repository_reaches_the_same_one(
    upstream: RegistryProcess, ghcr: RegistryProcess, multi: MirrorProcess
) -> None:
    hub_image = push_image(upstream.url, "library/alpine", "3.20", layers=[1000], seed=1)
    ghcr_image = push_image(ghcr.url, "owner/tool", "v1", layers=[1000], seed=2)
    for path in (
        "/v2/library/alpine/manifests/3.20",
        "/v2/alpine/manifests/3.20",
        "/v2/library/alpine/manifests/3.20?ns=docker.io",
        "/v2/alpine/manifests/3.20?ns=docker.io",
        "/v2/docker.io/library/alpine/manifests/3.20",
        "/v2/hub/library/alpine/manifests/3.20",
        "/v2/registry-1.docker.io/library/alpine/manifests/3.20",
    ):
        response = get_manifest(multi, path)
        assert response.status_code == 200, path
        assert response.headers["Docker-Content-Digest"] == hub_image.digest, path
    for path in (
        "/v2/ghcr.io/owner/tool/manifests/v1",
        "/v2/owner/tool/manifests/v1?ns=ghcr.io",
        "/v2/ghcr.io/owner/tool/manifests/v1?ns=ghcr.io",
    ):
        response = get_manifest(multi, path)
        assert response.status_code == 200, path
        assert response.headers["Docker-Content-Digest"] == ghcr_image.digest, path
    echoed = get_manifest(multi, "/v2/owner/tool/manifests/v1?ns=ghcr.io")
    assert echoed.headers["OCI-Namespace"] == "ghcr.io"
    with httpx.Client(base_url=multi.url, trust_env=False) as client:
        assert client.get("/v2/_catalog").json() == {
            "repositories": ["ghcr.io/owner/tool", "library/alpine"]
        }
        tags = client.get("/v2/owner/tool/tags/list?ns=ghcr.io")
        assert tags.json()["tags"] == ["v1"]


def test_unknown_registries_are_refused_without_any_connection(
    multi: MirrorProcess,
    recorder: ConnectionRecorder,
    upstream: RegistryProcess,
    ghcr: RegistryProcess,
) -> None:
    upstream.clear_log()
    ghcr.clear_log()
    target = f"127.0.0.1:{recorder.port}"
    cases = [
        f"/v2/library/alpine/manifests/latest?ns={target}",
        "/v2/library/alpine/manifests/latest?ns=evil.example.com",
        "/v2/library/alpine/manifests/latest?ns=localhost",
        "/v2/evil.example.com/library/alpine/manifests/latest",
        "/v2/localhost/x/manifests/latest",
        "/v2/169.254.169.254/latest/manifests/latest",
        f"/v2/library/alpine/blobs/sha256:{'0' * 64}?ns={target}",
        "/v2/quay.io/x/y/tags/list",
    ]
    with httpx.Client(base_url=multi.url, trust_env=False) as client:
        for path in cases:
            response = client.get(path)
            assert (response.status_code, error_code(response)) == (404, "NAME_UNKNOWN"), path
    assert recorder.connections == 0
    assert upstream.requests() == []
    assert ghcr.requests() == []


def test_allow_and_deny_lists_refuse_before_any_upstream_request(
    multi: MirrorProcess, upstream: RegistryProcess, ghcr: RegistryProcess
) -> None:
    upstream.clear_log()
    ghcr.clear_log()
    with httpx.Client(base_url=multi.url, trust_env=False) as client:
        for path in (
            "/v2/library/forbidden-fruit/manifests/1",  # deny list of the default
            "/v2/ghcr.io/stranger/tool/manifests/1",  # not in ghcr.io's allow list
            f"/v2/stranger/tool/blobs/sha256:{'1' * 64}?ns=ghcr.io",
        ):
            response = client.get(path)
            assert (response.status_code, error_code(response)) == (403, "DENIED"), path
    assert upstream.requests() == []
    assert ghcr.requests() == []


def test_tags_are_per_registry_and_blobs_shared(
    upstream: RegistryProcess, ghcr: RegistryProcess, multi: MirrorProcess
) -> None:
    hub = push_image(upstream.url, "library/same", "1", layers=[300_000, 1000], seed=7)
    other = push_image(ghcr.url, "library/same", "1", layers=[300_000, 2000], seed=7)
    assert hub.digest != other.digest
    shared = set(hub.layer_digests) & set(other.layer_digests)
    assert len(shared) == 1
    with httpx.Client(base_url=multi.url, trust_env=False, timeout=30) as client:
        for prefix, image in (("", hub), ("ghcr.io/", other)):
            manifest = client.get(
                f"/v2/{prefix}library/same/manifests/1", headers={"Accept": MANIFEST_ACCEPT}
            )
            assert manifest.headers["Docker-Content-Digest"] == image.digest
            for digest, data in image.blobs.items():
                assert client.get(f"/v2/{prefix}library/same/blobs/{digest}").content == data
        # Each registry keeps its own tag, also when served from cache with upstreams down.
        upstream.stop()
        ghcr.stop()
        for prefix, image in (("", hub), ("ghcr.io/", other)):
            manifest = client.get(
                f"/v2/{prefix}library/same/manifests/1", headers={"Accept": MANIFEST_ACCEPT}
            )
            assert manifest.status_code == 200
            assert manifest.headers["Docker-Content-Digest"] == image.digest
    (layer,) = shared
    hex_ = layer.split(":")[1]
    assert len([p for p in (multi.root / "blobs").rglob(hex_)]) == 1
    assert ghcr.count("GET", rf"/blobs/{layer}$") == 0  # served from the copy docker.io gave


def test_configuration_errors_for_upstreams(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump({"upstreams": [{"name": "docker.io", "url": "https://x"}]}))
    with pytest.raises(ConfigError, match=r"'docker\.io' names both proxy"):
        load_settings(environ={}, config_file=path)
    path.write_text(yaml.safe_dump({"upstreams": [{"url": "https://x"}]}))
    with pytest.raises(ConfigError, match=r"upstreams\.0\.name"):
        load_settings(environ={}, config_file=path)
    settings, _ = load_settings(
        environ={"REGISTRY_MIRROR_UPSTREAMS": '[{"name": "quay.io", "url": "https://quay.io"}]'}
    )
    assert [u.registry_name for u in settings.all_upstreams()] == ["docker.io", "quay.io"]


def test_router_unit_rules() -> None:
    hub = UpstreamEntry("docker.io", None, frozenset({"hub"}), dockerhub=True)  # type: ignore[arg-type]
    k8s = UpstreamEntry("registry.k8s.io", None, allow=("kube-*",))  # type: ignore[arg-type]
    router = Router([hub, k8s], default="docker.io")
    assert router.resolve(parse_repo_name("alpine")).key == "docker.io/library/alpine"
    route = router.resolve(parse_repo_name("kube-apiserver"), "registry.k8s.io")
    assert (route.entry.name, route.repo) == ("registry.k8s.io", "kube-apiserver")
    with pytest.raises(RepositoryDenied):
        router.resolve(parse_repo_name("registry.k8s.io/etcd"))
    with pytest.raises(RegistryNotMirrored):
        router.resolve(parse_repo_name("x"), "gcr.io")
    assert router.display("docker.io/library/alpine") == "library/alpine"
    assert router.display("registry.k8s.io/pause") == "registry.k8s.io/pause"
