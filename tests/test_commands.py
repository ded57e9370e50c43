"""The operator commands (ls, du, prune, verify, warm) on a live cache, as a person runs them."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import httpx

from tests.support.images import MANIFEST_ACCEPT, PushedImage, push_image, push_index
from tests.support.mirror import MirrorProcess, mirror_binary
from tests.support.registry import RegistryProcess


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [mirror_binary(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")},
    )


def pull(mirror: MirrorProcess, image: PushedImage) -> None:
    with httpx.Client(base_url=mirror.url, trust_env=False, timeout=60) as client:
        response = client.get(
            f"/v2/{image.repo}/manifests/{image.tag}", headers={"Accept": MANIFEST_ACCEPT}
        )
        assert response.status_code == 200
        for digest, data in image.blobs.items():
            assert client.get(f"/v2/{image.repo}/blobs/{digest}").content == data


def blob_path(mirror: MirrorProcess, digest: str) -> Path:
    hex_ = digest.split(":")[1]
    return mirror.root / "blobs" / "sha256" / hex_[:2] / hex_


def test_ls_du_verify_repair_prune(upstream: RegistryProcess, mirror: MirrorProcess) -> None:
    one = push_image(upstream.url, "library/one", "1.0", layers=[100_000, 50_000], seed=1)
    two = push_image(upstream.url, "team/two", "latest", layers=[100_000], seed=1)  # shares
    pull(mirror, one)
    pull(mirror, two)
    root = str(mirror.root)

    listing = cli("ls", "--root", root, "--json")
    assert listing.returncode == 0, listing.stderr
    rows = {(r["repository"], r["tag"]): r for r in json.loads(listing.stdout)}
    assert set(rows) == {("docker.io/library/one", "1.0"), ("docker.io/team/two", "latest")}
    assert rows[("docker.io/library/one", "1.0")]["digest"] == one.digest
    expected = len(one.manifest) + sum(len(b) for b in one.blobs.values())
    assert rows[("docker.io/library/one", "1.0")]["size"] == expected
    assert rows[("docker.io/library/one", "1.0")]["complete"]
    table = cli("ls", "--root", root)
    assert "library/one" in table.stdout and "team/two" in table.stdout

    usage = json.loads(cli("du", "--root", root, "--json").stdout)
    shared_layer = len(one.blobs[one.layer_digests[0]])
    assert usage["shared_bytes"] == shared_layer
    assert usage["blobs"] == 4 and usage["manifests"] == 2
    assert usage["disk_bytes"] >= usage["indexed_bytes"] > 0
    assert usage["free_bytes"] > 0
    assert "used on disk" in cli("du", "--root", root).stdout

    sound = cli("verify", "--root", root)
    assert sound.returncode == 0, sound.stdout + sound.stderr
    assert "sound" in sound.stdout

    # Damage the live cache in every way verify knows.
    corrupt = blob_path(mirror, one.layer_digests[1])
    data = bytearray(corrupt.read_bytes())
    data[100] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    blob_path(mirror, two.config_digest or "").unlink()
    orphan = os.urandom(1000)
    orphan_hex = hashlib.sha256(orphan).hexdigest()
    orphan_path = mirror.root / "blobs" / "sha256" / orphan_hex[:2] / orphan_hex
    orphan_path.parent.mkdir(parents=True, exist_ok=True)
    orphan_path.write_bytes(orphan)
    leftover = mirror.root / "staging" / "left.part"
    leftover.write_bytes(b"x")
    old = time.time() - 3600
    os.utime(orphan_path, (old, old))
    os.utime(leftover, (old, old))

    report = cli("verify", "--root", root, "--json")
    assert report.returncode == 1
    found = {(p["kind"], p["digest"]) for p in json.loads(report.stdout)["problems"]}
    assert found == {
        ("corrupt", one.layer_digests[1]),
        ("missing", two.config_digest),
        ("orphan", f"sha256:{orphan_hex}"),
        ("staging", "left.part"),
    }
    assert cli("verify", "--root", root, "--repair").returncode == 1
    again = cli("verify", "--root", root)
    assert again.returncode == 0, again.stdout
    # What was removed is fetched again, correctly, through the running server.
    pull(mirror, one)
    pull(mirror, two)
    assert cli("verify", "--root", root).returncode == 0

    dry = cli("prune", "--root", root, "--dry-run", "library/one")
    assert dry.returncode == 0
    assert "would remove 1 images" in dry.stdout
    assert blob_path(mirror, one.layer_digests[1]).exists()
    done = cli("prune", "--root", root, "--yes", "library/one")
    assert "removed 1 images" in done.stdout
    assert not blob_path(mirror, one.layer_digests[1]).exists()
    assert blob_path(mirror, one.layer_digests[0]).exists()  # still used by team/two
    after = json.loads(cli("ls", "--root", root, "--json").stdout)
    assert [(r["repository"], r["tag"]) for r in after] == [("docker.io/team/two", "latest")]
    assert cli("prune", "--root", root, "--yes", "--to-size", "0B").returncode == 0
    assert json.loads(cli("ls", "--root", root, "--json").stdout) == []
    assert cli("verify", "--root", root).returncode == 0
    pull(mirror, two)  # the server copes with content pruned under it


def test_warm_prefetches_through_the_running_mirror(
    upstream: RegistryProcess, mirror: MirrorProcess, tmp_path: Path
) -> None:
    single = push_image(upstream.url, "library/app", "2", layers=[200_000, 30_000], seed=4)
    multi = push_index(upstream.url, "library/multi", "1", layers=[40_000], seed=6)
    listing = tmp_path / "images.txt"
    listing.write_text("# provisioning list\napp:2\n")
    upstream.clear_log()
    result = cli(
        "warm", "--mirror", mirror.url, "-f", str(listing), "multi:1", "--platform", "linux/arm64"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 of 2 images warmed" in result.stdout
    for digest in single.blobs:
        assert blob_path(mirror, digest).exists()
    arm = multi.children["linux/arm64"]
    amd = multi.children["linux/amd64"]
    arm_blobs = {d for d in multi.blobs if d.split(":")[1] in arm.manifest.decode()}
    amd_only = {d for d in multi.blobs if d.split(":")[1] in amd.manifest.decode()} - arm_blobs
    assert arm_blobs and amd_only
    assert all(blob_path(mirror, d).exists() for d in arm_blobs)
    assert not any(blob_path(mirror, d).exists() for d in amd_only)
    # Again: everything is a cache hit, nothing is downloaded from upstream.
    upstream.clear_log()
    assert cli("warm", "--mirror", mirror.url, "app:2").returncode == 0
    assert upstream.count("GET", r"/blobs/") == 0
    missing = cli("warm", "--mirror", mirror.url, "nothing:here")
    assert missing.returncode == 1
    assert "MANIFEST_UNKNOWN" in missing.stdout


def test_commands_refuse_a_wrong_path(tmp_path: Path) -> None:
    for command in ("ls", "du", "verify", "prune"):
        args = [command, "--root", str(tmp_path / "nothing")]
        if command == "prune":
            args.append("--older-than=1d")
        result = cli(*args)
        assert result.returncode == 2, command
        assert "no registry-mirror cache at" in result.stderr
        assert "Traceback" not in result.stderr
