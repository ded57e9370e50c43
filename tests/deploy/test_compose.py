"""``deploy/compose.yaml`` brought up by Debian's podman-compose, with the image built by
``deploy/image/build.sh``, and pulled through by a real skopeo: the plain service, then the
one with the mirror's own TLS and htpasswd.

These machines have no bridge networking: an override file (the test's, beside the shipped
file) puts the services on the host's network, on a free loopback port, in front of a local
upstream. podman-compose 1.0.3 adds its project network even then and places
``--podman-args`` after ``podman volume``/``network``: the podman it is given is a
wrapper that passes podman's global options first and drops the project network when the
service asks for the host's.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.conftest import TAG
from tests.support.clients import require_tools
from tests.support.container import BuiltImage
from tests.support.images import push_image
from tests.support.ports import free_port
from tests.support.registry import RegistryProcess, make_htpasswd_line
from tests.support.skopeo import assert_dir_copy, skopeo_attempt
from tests.support.tls import make_cert

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose.yaml"
MiB = 2**20

WRAPPER = """#!/bin/bash
# podman with this machine's runtime flags first; no project network beside --network host.
args=()
host=0
for arg in "$@"; do [ "$arg" = host ] && host=1; done
skip=0
for arg in "$@"; do
    if [ $skip = 1 ]; then skip=0; continue; fi
    if [ $host = 1 ] && { [ "$arg" = --net ] || [ "$arg" = --network-alias ]; }; then
        skip=1; continue
    fi
    args+=("$arg")
done
exec @PODMAN@ --runtime runc --cgroup-manager cgroupfs "${args[@]}"
"""


class Compose:
    """``podman-compose -p PROJECT -f deploy/compose.yaml -f OVERRIDE`` in ``workdir``."""

    def __init__(self, workdir: Path, upstream: str, port: int) -> None:
        tools = require_tools("podman-compose", "podman")
        self.binary, self.podman = tools["podman-compose"], tools["podman"]
        self.workdir = workdir
        self.port = port
        self.project = f"rm{secrets.token_hex(4)}"
        self.wrapper = workdir / "podman"
        self.wrapper.write_text(WRAPPER.replace("@PODMAN@", self.podman))
        self.wrapper.chmod(0o755)
        host = {
            "network_mode": "host",
            "environment": {
                "REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}",
                "REGISTRY_PROXY_REMOTEURL": upstream,
            },
            # Below this machine's hard limits (the shipped 65536 is above them).
            "ulimits": {"nofile": {"soft": 16384, "hard": 16384}, "nproc": 4096},
        }
        self.override = workdir / "override.yaml"
        services = {"registry-mirror": host, "registry-mirror-tls": host}
        self.override.write_text(yaml.safe_dump({"services": services}))
        self.env = {
            **{k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "HOME")},
            "REGISTRY_MIRROR_IMAGE": TAG,
            "REGISTRY_MIRROR_SECRETS": str(workdir / "secrets"),
        }

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.binary, "--podman-path", str(self.wrapper), "-p", self.project,
             "-f", str(COMPOSE), "-f", str(self.override), *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"podman-compose {args} -> {proc.returncode}\n{proc.stdout}"
        return proc

    def podman_run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.wrapper), *args], capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def inspect(self, service: str) -> dict[str, Any]:
        proc = self.podman_run("container", "inspect", self.container(service))
        assert proc.returncode == 0, proc.stderr
        (info,) = json.loads(proc.stdout)
        assert isinstance(info, dict)
        return info

    def wait_ready(self, service: str, scheme: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.inspect(service)["State"]["Running"]:
                raise AssertionError(self.podman_run("logs", self.container(service)).stderr)
            try:
                url = f"{scheme}://127.0.0.1:{self.port}/readyz"
                if httpx.get(url, verify=False, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{service} not ready within {timeout}s")

    def healthcheck(self, service: str) -> tuple[int, str, str]:
        """The engine runs the compose file's healthcheck once: its exit status, the
        container's health then, and what the check printed."""
        proc = self.podman_run("healthcheck", "run", self.container(service))
        health = self.inspect(service)["State"]["Health"]
        output = (health.get("Log") or [{}])[-1].get("Output", "") + proc.stderr
        return proc.returncode, str(health["Status"]), output

    def stop(self, service: str) -> int:
        proc = self.podman_run("stop", "--time", "35", self.container(service), timeout=90)
        assert proc.returncode == 0, proc.stderr
        return int(self.inspect(service)["State"]["ExitCode"])

    def down(self) -> None:
        subprocess.run(
            [self.binary, "--podman-path", str(self.wrapper), "-p", self.project,
             "-f", str(COMPOSE), "-f", str(self.override), "down"],
            env=self.env, capture_output=True, timeout=180, check=False,
        )  # fmt: skip
        self.podman_run("volume", "rm", "--force", f"{self.project}_cache")


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path / "upstream") as registry:
        yield registry


@pytest.fixture
def compose(built: BuiltImage, upstream: RegistryProcess, tmp_path: Path) -> Iterator[Compose]:
    compose = Compose(tmp_path, upstream.url, free_port())
    try:
        yield compose
    finally:
        compose.down()


def skopeo_pull(port: int, ref: str, dest: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return skopeo_attempt(
        "copy", "--src-tls-verify=false", *options, f"docker://127.0.0.1:{port}/{ref}",
        f"dir:{dest}", home=dest.parent / f"{dest.name}.home", tmp=dest.parent,
    )  # fmt: skip


def test_compose_file_is_the_seed_deployment_with_the_image_changed() -> None:
    """The seed's service (registry:2, REGISTRY_PROXY_REMOTEURL, memory 16m / 250m) with
    what the mirror adds, read as compose reads it."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    plain, tls = services["registry-mirror"], services["registry-mirror-tls"]
    assert plain["image"] == "${REGISTRY_MIRROR_IMAGE:-registry-mirror:0.1.0}"
    assert plain["environment"]["REGISTRY_PROXY_REMOTEURL"] == "https://registry-1.docker.io"
    assert plain["deploy"]["resources"] == {
        "reservations": {"memory": "16m"},
        "limits": {"memory": "250m"},
    }
    assert plain["healthcheck"]["test"] == ["CMD-SHELL", "registry-mirror probe readyz"]
    assert "profiles" not in plain and tls["profiles"] == ["tls"]
    assert not any(key.startswith("REGISTRY_HTTP_TLS") for key in plain["environment"])
    assert tls["environment"]["REGISTRY_PROXY_REMOTEURL"] == "https://registry-1.docker.io"
    assert tls["deploy"] == plain["deploy"] and tls["healthcheck"] == plain["healthcheck"]
    # The container drains for http.draintimeout (25 s) before compose's SIGKILL.
    assert plain["stop_grace_period"] == "35s"


def test_compose_up_plain_then_tls_with_logins_and_pull_through(
    compose: Compose, upstream: RegistryProcess, tmp_path: Path
) -> None:
    image = push_image(upstream.url, "team/app", "1", layers=(1 * MiB, 3 * MiB), seed=5)

    compose.run("up", "-d", "registry-mirror")
    compose.wait_ready("registry-mirror", "http")
    info = compose.inspect("registry-mirror")
    host = info["HostConfig"]
    assert (host["Memory"], host["MemoryReservation"]) == (250 * MiB, 16 * MiB)
    assert host["ReadonlyRootfs"] is True
    env = info["Config"]["Env"]
    assert not any(e.startswith("REGISTRY_HTTP_TLS") for e in env), "the TLS service leaked in"
    pulled = skopeo_pull(compose.port, image.reference, tmp_path / "plain")
    assert pulled.returncode == 0, pulled.stderr
    assert_dir_copy(tmp_path / "plain", image)
    code, status, output = compose.healthcheck("registry-mirror")
    assert (code, status) == (0, "healthy"), output
    assert "/readyz: 200 ok" in output
    assert compose.stop("registry-mirror") == 0

    # The TLS service, on the same cache volume: what the plain one cached is there.
    secrets_dir = tmp_path / "secrets"
    cert, key, _ = make_cert(secrets_dir, "registry-mirror")
    (secrets_dir / "htpasswd").write_text(make_htpasswd_line("dave", "compose-pass") + "\n")
    for path in (cert, key, secrets_dir / "htpasswd"):
        shutil.chown(path, 65532, 65532)
        path.chmod(0o600)
    compose.run("up", "-d", "registry-mirror-tls")
    compose.wait_ready("registry-mirror-tls", "https")
    assert httpx.get(f"https://127.0.0.1:{compose.port}/v2/", verify=False).status_code == 401
    refused = skopeo_pull(compose.port, image.reference, tmp_path / "anonymous")
    assert refused.returncode != 0
    upstream.clear_log()
    pulled = skopeo_pull(
        compose.port, image.reference, tmp_path / "tls", "--src-creds", "dave:compose-pass"
    )
    assert pulled.returncode == 0, pulled.stderr
    assert_dir_copy(tmp_path / "tls", image)
    assert upstream.count("GET", "/blobs/") == 0, "the volume's cache was not used"
    code, status, output = compose.healthcheck("registry-mirror-tls")
    assert (code, status) == (0, "healthy"), output
    assert "https://127.0.0.1" in output and "/readyz: 200 ok" in output
    assert compose.stop("registry-mirror-tls") == 0
