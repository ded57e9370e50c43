"""Operator commands on a cache a live server is filling and serving.

The server remembers tag → digest and manifest bodies; ``prune`` and ``verify --repair``
run in other processes. These tests run them beside the real server and check that the
cache it keeps is still whole afterwards: listed, verifiable, and served with the
upstream down.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from tests.support.images import MANIFEST_ACCEPT, PushedImage, push_image
from tests.support.mirror import MirrorError, MirrorProcess, assert_log_quiet, mirror_command
from tests.support.registry import RegistryProcess

ROUNDS = 5


def pull(mirror: MirrorProcess, image: PushedImage) -> None:
    with httpx.Client(base_url=mirror.url, trust_env=False, timeout=60) as client:
        response = client.get(
            f"/v2/{image.repo}/manifests/{image.tag}", headers={"Accept": MANIFEST_ACCEPT}
        )
        assert response.status_code == 200, response.text
        assert response.headers["Docker-Content-Digest"] == image.digest
        for digest, data in image.blobs.items():
            blob = client.get(f"/v2/{image.repo}/blobs/{digest}")
            assert blob.status_code == 200, f"{image.repo}@{digest}: {blob.status_code}"
            assert blob.content == data


def listed(root: Path) -> dict[tuple[str, str], dict[str, object]]:
    result = mirror_command("ls", "--root", str(root), "--json")
    assert result.returncode == 0, result.stderr
    return {(r["repository"], r["tag"]): r for r in json.loads(result.stdout)}


def assert_sound(root: Path) -> None:
    result = mirror_command("verify", "--root", str(root), "--json")
    assert result.returncode == 0, result.stdout + result.stderr


def assert_served_from_cache(mirror: MirrorProcess, images: list[PushedImage]) -> None:
    """Upstream down: each tag answers from the cache (Warning: 110), each blob too."""
    with httpx.Client(base_url=mirror.url, trust_env=False, timeout=60) as client:
        for image in images:
            response = client.get(
                f"/v2/{image.repo}/manifests/{image.tag}", headers={"Accept": MANIFEST_ACCEPT}
            )
            assert response.status_code == 200, f"{image.repo}:{image.tag} {response.text}"
            assert response.headers.get("Warning", "").startswith("110 ")
            assert response.headers["Docker-Content-Digest"] == image.digest
            for digest, data in image.blobs.items():
                assert client.get(f"/v2/{image.repo}/blobs/{digest}").content == data


def test_pull_after_prune_is_cached_again(upstream: RegistryProcess, mirror: MirrorProcess) -> None:
    """The server's memories (tag → digest, the manifest body) must not survive a prune
    by another process: the next pull stores manifest, rows and tag again."""
    image = push_image(upstream.url, "library/alpine", "3.20", layers=[30_000, 5_000], seed=11)
    pull(mirror, image)
    pull(mirror, image)  # now remembered: the tag's write is skipped as unchanged
    root = mirror.root
    pruned = mirror_command("prune", "--root", str(root), "--yes", "alpine")
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert "removed 1 images" in pruned.stdout
    assert listed(root) == {}

    pull(mirror, image)
    rows = listed(root)
    assert rows[("docker.io/library/alpine", "3.20")]["digest"] == image.digest
    assert rows[("docker.io/library/alpine", "3.20")]["complete"]
    assert_sound(root)

    upstream.stop()
    mirror.restart()
    assert_served_from_cache(mirror, [image])


def test_a_second_server_on_the_same_root_refuses_to_start(
    upstream: RegistryProcess, mirror: MirrorProcess
) -> None:
    download = mirror.root / "staging" / "in-progress.part"
    download.write_bytes(b"the first server is writing this")
    second = MirrorProcess(mirror.root, upstream.url)
    second.log_path = mirror.root.parent / "second.log"
    with pytest.raises(MirrorError) as failed:
        second.start()
    assert "exited with 1" in str(failed.value)
    lines = [line for line in second.log().splitlines() if line.strip()]
    assert lines[-1].startswith("registry-mirror: cache ")
    assert f"in use by another registry-mirror server (pid {mirror.pid})" in lines[-1]
    assert_log_quiet(second.log())
    assert download.exists()  # not cleaned as "left by a previous run"
    # Operator commands run beside it; the first server still serves.
    assert mirror_command("ls", "--root", str(mirror.root)).returncode == 0
    assert httpx.get(f"{mirror.url}/v2/", trust_env=False).status_code == 200
    # Once it is gone, the root is free again.
    mirror.stop()
    second.start()
    second.stop()


def test_operator_commands_in_a_loop_beside_a_busy_server(
    upstream: RegistryProcess, mirror: MirrorProcess
) -> None:
    images = [
        push_image(upstream.url, f"library/app{i}", "1", layers=[20_000 + i, 8_000], seed=100 + i)
        for i in range(ROUNDS)
    ]
    shared = push_image(upstream.url, "team/base", "1", layers=[20_000, 8_000], seed=100)
    everything = [*images, shared]  # team/base:1 is app0:1, byte for byte
    assert shared.digest == images[0].digest
    for image in everything:
        pull(mirror, image)
    root = str(mirror.root)
    failures: list[str] = []
    stop = threading.Event()

    def keep_pulling() -> None:
        for _ in range(200):  # bounded; stopped by the event long before
            if stop.is_set():
                return
            for image in everything:
                try:
                    pull(mirror, image)
                except (AssertionError, httpx.HTTPError) as exc:
                    failures.append(f"{image.repo}: {exc}")

    puller = threading.Thread(target=keep_pulling)
    puller.start()
    try:
        for round_ in range(ROUNDS):
            repaired = mirror_command("verify", "--root", root, "--repair", "--json")
            assert repaired.returncode == 0, f"round {round_}: {repaired.stdout}"
            assert mirror_command("du", "--root", root, "--json").returncode == 0
            pruned = mirror_command("prune", "--root", root, "--yes", f"library/app{round_}")
            assert pruned.returncode == 0, f"round {round_}: {pruned.stdout}{pruned.stderr}"
            assert mirror_command("ls", "--root", root, "--json").returncode == 0
    finally:
        stop.set()
        puller.join(timeout=120)
    assert not puller.is_alive()
    assert failures == []

    for image in everything:  # the last prune may have been the last word
        pull(mirror, image)
    rows = listed(mirror.root)
    for image in everything:
        row = rows[(f"docker.io/{image.repo}", image.tag)]
        assert row["digest"] == image.digest and row["complete"], image.repo
    assert_sound(mirror.root)
    upstream.stop()
    mirror.restart()
    assert_served_from_cache(mirror, everything)
