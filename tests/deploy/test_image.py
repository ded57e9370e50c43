"""The container image: built offline by ``deploy/image/build.sh`` (``make image``), run by a
real podman with the seed's limits, pulled through by a real skopeo.

Run as these machines must (``--runtime runc --cgroup-manager cgroupfs --network host``,
explicit ulimits), in a podman of the tests' own storage that loads the built image from
its oci-archive.
"""

from __future__ import annotations

import concurrent.futures
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.conftest import TAG
from tests.support.container import ULIMITS, BuiltImage, MirrorContainer, build_image
from tests.support.container import cgroup_memory as memory_of
from tests.support.images import push_image, sha256_digest
from tests.support.podman import Podman, podman_factory
from tests.support.ports import free_port
from tests.support.registry import RegistryProcess, make_htpasswd_line
from tests.support.resources import resources
from tests.support.skopeo import assert_dir_copy, skopeo_attempt
from tests.support.tls import make_cert

MiB = 2**20
UID = 65532


@pytest.fixture(scope="module")
def podman(built: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    with podman_factory() as make:
        podman = make(tmp_path_factory.mktemp("podman"), "")
        podman.run("load", "--quiet", "--input", str(built.archive), timeout=300)
        yield podman


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path / "upstream") as registry:
        yield registry


def volume(podman: Podman, name: str) -> str:
    podman.run("volume", "create", name)
    return name


def pull(mirror: MirrorContainer, ref: str, dest: Path, *options: str) -> None:
    """``skopeo copy docker://MIRROR/REF dir:DEST``, the image checked byte for byte by
    the caller."""
    proc = skopeo_attempt(
        "copy", "--src-tls-verify=false", *options,
        f"docker://127.0.0.1:{mirror.port}/{ref}", f"dir:{dest}",
        home=dest.parent / f"{dest.name}.home", tmp=dest.parent, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"skopeo {ref} -> {proc.returncode}\n{proc.stderr}"


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith("Uid:")]
    return int(line.split()[1])


def peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) * 1024


def test_image_is_slim_non_root_and_the_same_twice(
    built: BuiltImage, podman: Podman, tmp_path: Path
) -> None:
    info = podman.inspect(TAG)
    config = info["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert set(config["ExposedPorts"]) == {"5000/tcp"}
    assert set(config["Volumes"]) == {"/var/lib/registry"}
    assert config["Entrypoint"] == ["registry-mirror"]
    assert config["Cmd"] == ["serve"]
    assert "REGISTRY_MIRROR_CONFIG=/etc/docker/registry/config.yml" in config["Env"]
    size = int(info["Size"])
    print(f"image {built.image_id[:12]}: {size / MiB:.1f} MiB uncompressed,"
          f" {built.archive.stat().st_size / MiB:.1f} MiB as an oci-archive")  # fmt: skip
    assert size < 110 * MiB, f"{size / MiB:.1f} MiB: the image grew"
    version = podman.run(
        "--runtime", "runc", "run", "--rm", "--network", "host", *ULIMITS, TAG, "--version"
    )  # fmt: skip
    assert version.stdout.strip() == "registry-mirror 0.1.0"

    # The same sources, a second build: the same image ID (its config, naming the layer).
    again = build_image(tmp_path / "again", "localhost/registry-mirror:again")
    assert again.image_id == built.image_id

    def manifest_digest(archive: Path) -> str:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("index.json")
            assert member is not None
            (manifest,) = json.load(member)["manifests"]
        return str(manifest["digest"])

    # The manifest names the config and the compressed layer by digest: the same image to
    # any registry it is pushed to (the archive's own tar headers carry the push's time).
    assert manifest_digest(again.archive) == manifest_digest(built.archive)


def test_pulls_through_the_container_within_the_seed_limits_under_load(
    podman: Podman, upstream: RegistryProcess, tmp_path: Path
) -> None:
    images = [
        push_image(upstream.url, f"team/app{i}", "1", layers=(2 * MiB, 6 * MiB), seed=i)
        for i in range(6)
    ]
    big = push_image(upstream.url, "team/big", "1", layers=(96 * MiB,), seed=99)
    cache = volume(podman, "load-cache")
    env = {"REGISTRY_PROXY_REMOTEURL": upstream.url}
    with MirrorContainer(podman, TAG, "load", free_port(), env=env,
                         options=["--volume", f"{cache}:/var/lib/registry"]) as mirror:  # fmt: skip
        pid = mirror.pid()
        assert uid_of(pid) == UID
        limits = memory_of(pid)
        assert limits["limit"] == 250 * MiB
        assert limits["reservation"] == 16 * MiB
        before = resources(pid)
        upstream.clear_log()

        # Two skopeo pulls of each image at once, and 16 clients on one 96 MiB layer.
        (layer,) = big.layer_digests

        def get_big() -> str:
            with httpx.Client(timeout=120) as client:
                url = f"{mirror.url}/v2/team/big/blobs/{layer}"
                with client.stream("GET", url) as response:
                    assert response.status_code == 200
                    digest = sha256_digest(b"".join(response.iter_bytes()))
            return digest

        with concurrent.futures.ThreadPoolExecutor(max_workers=28) as pool:
            pulls = [
                pool.submit(pull, mirror, image.reference, tmp_path / f"{image.repo[5:]}-{n}")
                for image in images
                for n in range(2)
            ]
            gets = [pool.submit(get_big) for _ in range(16)]
            for future in pulls:
                future.result()
            assert {future.result() for future in gets} == {layer}
        for image in images:
            for n in range(2):
                assert_dir_copy(tmp_path / f"{image.repo[5:]}-{n}", image)

        # Each blob came from upstream once; the process stayed far below the cap.
        for digest in [layer, *(digest for image in images for digest in image.blobs)]:
            assert upstream.count("GET", f"/blobs/{digest}$", status=200) == 1, digest
        # The cgroup's peak counts the page cache of what was written (reclaimable, and
        # reclaimed near the cap); the process's own peak RSS (VmHWM) is what must stay low.
        peak = memory_of(pid)["peak"]
        after = resources(pid)
        hwm = peak_rss(pid)
        print(f"peak RSS {hwm / MiB:.1f} MiB, cgroup peak {peak / MiB:.1f} MiB of 250 MiB;"
              f" {before.describe()} -> {after.describe()}")  # fmt: skip
        assert hwm < 120 * MiB
        state = mirror.state()
        assert state["Running"] and not state["OOMKilled"]
        assert "Traceback" not in mirror.logs()


def test_the_cache_survives_restarts_on_its_volume_and_sigterm_stops_cleanly(
    podman: Podman, upstream: RegistryProcess, tmp_path: Path
) -> None:
    image = push_image(upstream.url, "team/app", "1", layers=(4 * MiB,), seed=7)
    cache = volume(podman, "restart-cache")
    options = ["--volume", f"{cache}:/var/lib/registry"]
    env = {"REGISTRY_PROXY_REMOTEURL": upstream.url}
    port = free_port()
    with MirrorContainer(podman, TAG, "restart", port, env=env, options=options) as mirror:
        pull(mirror, image.reference, tmp_path / "first")
        assert_dir_copy(tmp_path / "first", image)
        code, took = mirror.stop()
        assert (code, mirror.state()["OOMKilled"]) == (0, False)
        assert took < 10, f"stopped in {took:.1f}s: SIGTERM was not obeyed"
        assert "drained" in mirror.logs()

        # Upstream gone: the restarted container serves the image from its volume, the
        # tag from the last known mapping.
        upstream.stop()
        mirror.restart()
        pull(mirror, image.reference, tmp_path / "restarted")
        assert_dir_copy(tmp_path / "restarted", image)
        assert mirror.stop()[0] == 0

    # A new container (an upgrade, `compose up` after a pull) on the same volume, too.
    with MirrorContainer(podman, TAG, "recreated", port, env=env, options=options) as mirror:
        pull(mirror, f"team/app@{image.digest}", tmp_path / "recreated")
        assert_dir_copy(tmp_path / "recreated", image)
        assert "Traceback" not in mirror.logs()
        assert mirror.stop()[0] == 0


def test_read_only_root_tls_and_htpasswd_only_the_volume_writable(
    podman: Podman, upstream: RegistryProcess, tmp_path: Path
) -> None:
    image = push_image(upstream.url, "team/secret", "1", layers=(1 * MiB, 3 * MiB), seed=3)
    secrets = tmp_path / "secrets"
    cert, key, _ = make_cert(secrets, "registry-mirror")
    (secrets / "htpasswd").write_text(make_htpasswd_line("carol", "s3cret-pass") + "\n")
    for path in (cert, key, secrets / "htpasswd"):
        path.chmod(0o644)  # the mirror runs as 65532; a real deployment chowns them
    cache = volume(podman, "secure-cache")
    env = {
        "REGISTRY_PROXY_REMOTEURL": upstream.url,
        "REGISTRY_HTTP_TLS_CERTIFICATE": "/run/secrets/mirror/cert.pem",
        "REGISTRY_HTTP_TLS_KEY": "/run/secrets/mirror/key.pem",
        "REGISTRY_AUTH_HTPASSWD_PATH": "/run/secrets/mirror/htpasswd",
        "REGISTRY_AUTH_HTPASSWD_REALM": "Registry Mirror",
    }
    options = [
        "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--volume", f"{cache}:/var/lib/registry",
        "--volume", f"{secrets}:/run/secrets/mirror:ro",
    ]  # fmt: skip
    with MirrorContainer(podman, TAG, "secure", free_port(), env=env, options=options,
                         scheme="https") as mirror:  # fmt: skip
        assert uid_of(mirror.pid()) == UID
        assert httpx.get(f"{mirror.url}/v2/", verify=False).status_code == 401
        refused = skopeo_attempt(
            "copy", "--src-tls-verify=false", f"docker://127.0.0.1:{mirror.port}/team/secret:1",
            f"dir:{tmp_path / 'anonymous'}", home=tmp_path / "h0", tmp=tmp_path,
        )  # fmt: skip
        assert refused.returncode != 0
        pull(mirror, image.reference, tmp_path / "pulled", "--src-creds", "carol:s3cret-pass")
        assert_dir_copy(tmp_path / "pulled", image)

        # The healthcheck command, over the mirror's own TLS, with no credentials.
        probe = mirror.exec("registry-mirror", "probe")
        assert probe.returncode == 0, probe.stderr
        assert "/readyz: 200 ok" in probe.stdout

        # Writable: the volume (where the cache is, not under a home directory), nothing else.
        write = (
            "import sys\n"
            "for path in sys.argv[1:]:\n"
            "    try:\n"
            "        open(path, 'w').close(); print(path, 'written')\n"
            "    except OSError as exc:\n"
            "        print(path, exc.strerror)\n"
        )
        tried = mirror.exec(
            "python3.11", "-c", write,
            "/probe", "/etc/probe", "/usr/local/bin/probe", "/var/lib/registry/probe",
        )  # fmt: skip
        assert tried.stdout.splitlines() == [
            "/probe Read-only file system",
            "/etc/probe Read-only file system",
            "/usr/local/bin/probe Read-only file system",
            "/var/lib/registry/probe written",
        ]
        listing = mirror.exec("python3.11", "-c", _OWNERS).stdout.splitlines()
        assert f"/var/lib/registry/blobs {UID}" in listing
        assert f"/var/lib/registry/index.db {UID}" in listing
        assert "/var/lib/registry/.cache absent" in listing
        assert mirror.stop()[0] == 0
        assert "s3cret-pass" not in mirror.logs()


_OWNERS = """
import os
for path in ("/var/lib/registry/blobs", "/var/lib/registry/index.db", "/var/lib/registry/.cache"):
    print(path, os.stat(path).st_uid if os.path.exists(path) else "absent")
"""
