"""``Containerfile`` built by a real ``buildah bud`` and run by a real podman.

These machines pull no base image: a Debian 12 rootfs with python3, venv and passwd, made
by mmdebstrap, stands in for ``python:3.11-slim-bookworm`` (``--build-arg PYTHON_IMAGE``).
pip inside the build reaches PyPI through this machine's TLS-intercepting proxy, so the
build sees the machine's CA bundle and pip.conf (bind mounts of the build's RUN steps,
not part of the image).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import require_tools
from tests.support.container import ULIMITS, MirrorContainer
from tests.support.images import push_image
from tests.support.podman import Podman, podman_factory
from tests.support.ports import free_port
from tests.support.registry import RegistryProcess
from tests.support.skopeo import assert_dir_copy, skopeo_attempt

REPO = Path(__file__).resolve().parents[2]
BASE = "localhost/registry-mirror-testbase:python3"
TAG = "localhost/registry-mirror:containerfile"


def run(*command: str, timeout: float = 600) -> str:
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, cwd=REPO,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"{command[:3]} -> {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tools = require_tools("mmdebstrap", "buildah")
    work = tmp_path_factory.mktemp("containerfile")
    rootfs = work / "base.tar"
    run(
        tools["mmdebstrap"], "--quiet", "--mode=root", "--variant=essential",
        "--include=python3,python3-venv,ca-certificates,passwd",
        "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
        "bookworm", str(rootfs),
    )  # fmt: skip
    container = run(tools["buildah"], "from", "--quiet", "scratch").strip()
    run(tools["buildah"], "add", "--quiet", container, str(rootfs), "/")
    run(tools["buildah"], "commit", "--quiet", "--rm", container, BASE)
    mounts = [
        f"--volume={path}:{path}:ro"
        for path in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf")
        if Path(path).exists()
    ]
    run(
        tools["buildah"], "bud", "--quiet", "--network", "host", "--isolation", "chroot",
        *mounts, "--build-arg", f"PYTHON_IMAGE={BASE}", "-f", "Containerfile", "-t", TAG, ".",
    )  # fmt: skip
    out = work / "image.tar"
    run(tools["buildah"], "push", "--quiet", TAG, f"oci-archive:{out}:{TAG}")
    return out


@pytest.fixture(scope="module")
def podman(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    with podman_factory() as make:
        podman = make(tmp_path_factory.mktemp("podman"), "")
        podman.run("load", "--quiet", "--input", str(archive), timeout=300)
        yield podman


def test_containerfile_image_runs_as_the_offline_one(podman: Podman, tmp_path: Path) -> None:
    config = podman.inspect(TAG)["Config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["registry-mirror"] and config["Cmd"] == ["serve"]
    assert set(config["Volumes"]) == {"/var/lib/registry"}
    assert set(config["ExposedPorts"]) == {"5000/tcp"}
    version = podman.run("--runtime", "runc", "run", "--rm", "--network", "host", *ULIMITS,
                         "--read-only", TAG, "--version")  # fmt: skip
    assert version.stdout.strip() == "registry-mirror 0.1.0"

    with RegistryProcess(tmp_path / "upstream") as upstream:
        image = push_image(upstream.url, "team/app", "1", layers=(2 * 2**20,), seed=11)
        podman.run("volume", "create", "containerfile-cache")
        options = ["--read-only", "--cap-drop", "ALL",
                   "--volume", "containerfile-cache:/var/lib/registry"]  # fmt: skip
        env = {"REGISTRY_PROXY_REMOTEURL": upstream.url}
        with MirrorContainer(podman, TAG, "containerfile", free_port(), env=env,
                             options=options) as mirror:  # fmt: skip
            dest = tmp_path / "pulled"
            proc = skopeo_attempt(
                "copy", "--src-tls-verify=false",
                f"docker://127.0.0.1:{mirror.port}/{image.reference}", f"dir:{dest}",
                home=tmp_path / "home", tmp=tmp_path,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            assert_dir_copy(dest, image)
            probe = mirror.exec("registry-mirror", "probe")
            assert probe.returncode == 0, probe.stderr
            assert mirror.stop()[0] == 0
