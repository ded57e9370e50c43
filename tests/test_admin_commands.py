"""The admin actions on the command line (``inspect``, ``refresh``, ``forget``) on a live
cache beside the running server: output, exit statuses, ``--json``, and that the server
sees each change (its memories of the index forgotten, as after ``prune``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import MirrorFactory
from tests.support.faulty import FaultyProxy
from tests.support.images import MANIFEST_ACCEPT, PushedImage, push_image
from tests.support.mirror import STALE, MirrorProcess, assert_log_quiet, mirror_command
from tests.support.registry import RegistryProcess
from tests.support.store import blob_file
from tests.support.waits import wait_until


def pull(mirror: MirrorProcess, image: PushedImage) -> httpx.Response:
    with httpx.Client(base_url=mirror.url, trust_env=False, timeout=60) as client:
        response = client.get(
            f"/v2/{image.repo}/manifests/{image.tag}", headers={"Accept": MANIFEST_ACCEPT}
        )
        assert response.status_code == 200, response.text
        for digest, data in image.blobs.items():
            assert client.get(f"/v2/{image.repo}/blobs/{digest}").content == data
        return response


def admin(mirror: MirrorProcess, upstream: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``registry-mirror ARGS`` on the mirror's cache, with its upstream (for its naming
    and for refresh)."""
    return mirror_command(
        *args, "--root", str(mirror.root), "--upstream", upstream, "--proxy-dockerhub", "true"
    )


def as_json(mirror: MirrorProcess, upstream: str, *args: str, status: int = 0) -> dict[str, Any]:
    result = admin(mirror, upstream, *args, "--json")
    assert result.returncode == status, result.stdout + result.stderr
    return dict(json.loads(result.stdout))


def test_inspect_refresh_forget_beside_the_server(
    upstream: RegistryProcess, proxy: FaultyProxy, mirror_factory: MirrorFactory
) -> None:
    mirror = mirror_factory(proxy.url)
    first = push_image(upstream.url, "library/app", "1", layers=[30_000, 5_000], seed=21)
    pull(mirror, first)
    pull(mirror, first)  # the server now remembers app:1 → first

    report = wait_until(
        lambda: (
            admin(mirror, proxy.url, "inspect", "app:1").returncode == 0
            and as_json(mirror, proxy.url, "inspect", "app:1")
        ),
        timeout=15,
    )
    assert report["digest"] == first.digest and report["blobs"] == 3
    table = admin(mirror, proxy.url, "inspect", "library/app:1")
    assert table.returncode == 0, table.stderr
    assert f"library/app:1: {first.digest}" in table.stdout
    assert "3 of 3 blobs cached" in table.stdout
    assert "admin inspect library/app:1 by " in table.stderr  # logged, who and what
    missing = admin(mirror, proxy.url, "inspect", "app:2")
    assert (missing.returncode, missing.stdout.strip()) == (1, "library/app:2: not cached")
    bad = admin(mirror, proxy.url, "inspect", "../etc/passwd")
    assert bad.returncode == 2 and "not an image" not in bad.stdout
    assert "invalid repository name" in bad.stderr and "Traceback" not in bad.stderr

    # Refresh beside the server: the server's memory of the tag must not outlive it.
    # The same base layer (seed and size), another top layer.
    second = push_image(upstream.url, "library/app", "1", layers=[30_000, 6_000], seed=21)
    assert second.layer_digests[0] == first.layer_digests[0]
    moved = admin(mirror, proxy.url, "refresh", "app:1")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert f"library/app:1: {first.digest} → {second.digest}" in moved.stdout
    unchanged = as_json(mirror, proxy.url, "refresh", "app:1")
    assert (unchanged["old"], unchanged["new"], unchanged["changed"]) == (
        second.digest,
        second.digest,
        False,
    )
    digest = admin(mirror, proxy.url, "refresh", f"library/app@{first.digest}")
    assert digest.returncode == 2 and "refresh takes a tag" in digest.stderr
    proxy.status(None, r"^/v2/", 503)
    down = admin(mirror, proxy.url, "refresh", "app:1")
    assert down.returncode == 1 and "nothing changed" in down.stderr
    partial = as_json(mirror, proxy.url, "inspect", "app:1", status=1)  # blobs not fetched
    assert partial["digest"] == second.digest and partial["cached"]
    with httpx.Client(base_url=mirror.url, trust_env=False, timeout=60) as client:
        stale = client.get("/v2/library/app/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
    assert stale.status_code == 200
    assert stale.headers["Warning"] == STALE
    assert stale.headers["Docker-Content-Digest"] == second.digest
    proxy.clear_faults()

    # Forget beside the server: gone for its next pull, which asks upstream again.
    pull(mirror, second)
    wait_until(lambda: admin(mirror, proxy.url, "inspect", "app:1").returncode == 0, timeout=15)
    gone = admin(mirror, proxy.url, "forget", "app:1")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert "untagged library/app:1" in gone.stdout
    assert "removed 1 images: 3 files" in gone.stdout  # the base layer is first's too
    assert not blob_file(mirror.root, second.digest).exists()
    # The first image (untagged since the refresh) still has all of its content here,
    # served with upstream down: the repository let go of nothing it uses.
    proxy.status(None, r"^/v2/", 503)
    with httpx.Client(base_url=mirror.url, trust_env=False, timeout=60) as client:
        kept = client.get(
            f"/v2/library/app/manifests/{first.digest}", headers={"Accept": MANIFEST_ACCEPT}
        )
        assert kept.status_code == 200, kept.text
        for blob, data in first.blobs.items():
            assert client.get(f"/v2/library/app/blobs/{blob}").content == data
    proxy.clear_faults()
    again = admin(mirror, proxy.url, "forget", "app:1")
    assert again.returncode == 1 and "not cached" in again.stderr
    proxy.clear_log()
    pull(mirror, second)
    assert proxy.count("GET", rf"/manifests/{second.digest}$") == 1
    assert proxy.count("GET", rf"/blobs/{second.layer_digests[1]}$") == 1
    # By digest, as JSON: the first image (untagged since the refresh) and what only it used.
    result = as_json(mirror, proxy.url, "forget", f"app@{first.digest}")
    assert (result["images"], result["files"], result["kept"]) == (1, 3, 1)  # base: second's
    assert result["tags"] == []
    assert_log_quiet(mirror.log())


def test_commands_on_a_root_without_a_cache(tmp_path: Path) -> None:
    result = mirror_command("inspect", "--root", str(tmp_path / "none"), "alpine")
    assert result.returncode == 2 and "no registry-mirror cache" in result.stderr
