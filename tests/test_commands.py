"""The operator commands (ls, du, prune, verify, warm) on a live cache, as a person runs them."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import MirrorFactory
from tests.support.images import MANIFEST_ACCEPT, PushedImage, push_image, push_index, sha256_digest
from tests.support.mirror import MirrorProcess, mirror_command
from tests.support.registry import RegistryProcess, make_htpasswd_line
from tests.support.store import blob_file, staging_dir
from tests.support.tls import tls_args


def pull(mirror: MirrorProcess, image: PushedImage) -> None:
    with httpx.Client(base_url=mirror.url, trust_env=False, timeout=60) as client:
        response = client.get(
            f"/v2/{image.repo}/manifests/{image.tag}", headers={"Accept": MANIFEST_ACCEPT}
        )
        assert response.status_code == 200
        for digest, data in image.blobs.items():
            assert client.get(f"/v2/{image.repo}/blobs/{digest}").content == data


def test_ls_du_verify_repair_prune(upstream: RegistryProcess, mirror: MirrorProcess) -> None:
    one = push_image(upstream.url, "library/one", "1.0", layers=[100_000, 50_000], seed=1)
    two = push_image(upstream.url, "team/two", "latest", layers=[100_000], seed=1)  # shares
    pull(mirror, one)
    pull(mirror, two)
    root = str(mirror.root)

    listing = mirror_command("ls", "--root", root, "--json")
    assert listing.returncode == 0, listing.stderr
    rows = {(r["repository"], r["tag"]): r for r in json.loads(listing.stdout)}
    assert set(rows) == {("docker.io/library/one", "1.0"), ("docker.io/team/two", "latest")}
    assert rows[("docker.io/library/one", "1.0")]["digest"] == one.digest
    expected = len(one.manifest) + sum(len(b) for b in one.blobs.values())
    assert rows[("docker.io/library/one", "1.0")]["size"] == expected
    assert rows[("docker.io/library/one", "1.0")]["complete"]
    table = mirror_command("ls", "--root", root)
    assert "library/one" in table.stdout and "team/two" in table.stdout

    usage = json.loads(mirror_command("du", "--root", root, "--json").stdout)
    shared_layer = len(one.blobs[one.layer_digests[0]])
    assert usage["shared_bytes"] == shared_layer
    assert usage["blobs"] == 4 and usage["manifests"] == 2
    assert usage["disk_bytes"] >= usage["indexed_bytes"] > 0
    assert usage["free_bytes"] > 0
    assert "used on disk" in mirror_command("du", "--root", root).stdout

    sound = mirror_command("verify", "--root", root)
    assert sound.returncode == 0, sound.stdout + sound.stderr
    assert "sound" in sound.stdout

    # Damage the live cache in every way verify knows.
    corrupt = blob_file(mirror.root, one.layer_digests[1])
    data = bytearray(corrupt.read_bytes())
    data[100] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    blob_file(mirror.root, two.config_digest or "").unlink()
    orphan = os.urandom(1000)
    orphan_digest = sha256_digest(orphan)
    orphan_path = blob_file(mirror.root, orphan_digest)
    orphan_path.parent.mkdir(parents=True, exist_ok=True)
    orphan_path.write_bytes(orphan)
    leftover = staging_dir(mirror.root) / "left.part"
    leftover.write_bytes(b"x")
    old = time.time() - 3600
    os.utime(orphan_path, (old, old))
    os.utime(leftover, (old, old))

    report = mirror_command("verify", "--root", root, "--json")
    assert report.returncode == 1
    found = {(p["kind"], p["digest"]) for p in json.loads(report.stdout)["problems"]}
    assert found == {
        ("corrupt", one.layer_digests[1]),
        ("missing", two.config_digest),
        ("orphan", orphan_digest),
        ("staging", "left.part"),
    }
    assert mirror_command("verify", "--root", root, "--repair").returncode == 1
    again = mirror_command("verify", "--root", root)
    assert again.returncode == 0, again.stdout
    # What was removed is fetched again, correctly, through the running server.
    pull(mirror, one)
    pull(mirror, two)
    assert mirror_command("verify", "--root", root).returncode == 0

    dry = mirror_command("prune", "--root", root, "--dry-run", "library/one")
    assert dry.returncode == 0
    assert "would remove 1 images" in dry.stdout
    assert blob_file(mirror.root, one.layer_digests[1]).exists()
    done = mirror_command("prune", "--root", root, "--yes", "library/one")
    assert "removed 1 images" in done.stdout
    assert not blob_file(mirror.root, one.layer_digests[1]).exists()
    assert blob_file(mirror.root, one.layer_digests[0]).exists()  # still used by team/two
    after = json.loads(mirror_command("ls", "--root", root, "--json").stdout)
    assert [(r["repository"], r["tag"]) for r in after] == [("docker.io/team/two", "latest")]
    assert mirror_command("prune", "--root", root, "--yes", "--to-size", "0B").returncode == 0
    assert json.loads(mirror_command("ls", "--root", root, "--json").stdout) == []
    assert mirror_command("verify", "--root", root).returncode == 0
    pull(mirror, two)  # the server copes with content pruned under it


def test_warm_prefetches_through_the_running_mirror(
    upstream: RegistryProcess, mirror: MirrorProcess, tmp_path: Path
) -> None:
    single = push_image(upstream.url, "library/app", "2", layers=[200_000, 30_000], seed=4)
    multi = push_index(upstream.url, "library/multi", "1", layers=[40_000], seed=6)
    listing = tmp_path / "images.txt"
    listing.write_text("# provisioning list\napp:2\n")
    upstream.clear_log()
    result = mirror_command(
        "warm", "--mirror", mirror.url, "-f", str(listing), "multi:1", "--platform", "linux/arm64"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 of 2 images warmed" in result.stdout
    for digest in single.blobs:
        assert blob_file(mirror.root, digest).exists()
    arm = multi.children["linux/arm64"]
    amd = multi.children["linux/amd64"]
    arm_blobs = {d for d in multi.blobs if d.split(":")[1] in arm.manifest.decode()}
    amd_only = {d for d in multi.blobs if d.split(":")[1] in amd.manifest.decode()} - arm_blobs
    assert arm_blobs and amd_only
    assert all(blob_file(mirror.root, d).exists() for d in arm_blobs)
    assert not any(blob_file(mirror.root, d).exists() for d in amd_only)
    # Again: everything is a cache hit, nothing is downloaded from upstream.
    upstream.clear_log()
    assert mirror_command("warm", "--mirror", mirror.url, "app:2").returncode == 0
    assert upstream.count("GET", r"/blobs/") == 0
    missing = mirror_command("warm", "--mirror", mirror.url, "nothing:here")
    assert missing.returncode == 1
    assert "MANIFEST_UNKNOWN" in missing.stdout


def test_commands_refuse_a_wrong_path(tmp_path: Path) -> None:
    for command in ("ls", "du", "verify", "prune"):
        args = [command, "--root", str(tmp_path / "nothing")]
        if command == "prune":
            args.append("--older-than=1d")
        result = mirror_command(*args)
        assert result.returncode == 2, command
        assert "no registry-mirror cache at" in result.stderr
        assert "Traceback" not in result.stderr


def test_prune_matches_repositories_as_ls_shows_them(
    upstream: RegistryProcess, mirror_factory: MirrorFactory, tmp_path: Path
) -> None:
    """``alpine`` is Docker Hub's ``library/alpine`` on the default registry only; an image
    another repository shares by digest stays, that repository keeps its tag; a pattern
    matching nothing, a bare number and a destructive run nobody confirmed are errors."""
    with RegistryProcess(tmp_path / "other") as other:
        alpine = push_image(upstream.url, "library/alpine", "1", layers=[60_000], seed=21)
        copy = push_image(upstream.url, "team/copy", "1", layers=[60_000], seed=21)
        assert copy.digest == alpine.digest  # the same image under another name
        lone = push_image(upstream.url, "library/lone", "1", layers=[10_000], seed=22)
        elsewhere = push_image(other.url, "library/alpine", "1", layers=[30_000], seed=23)
        mirror = mirror_factory(
            upstream.url,
            args=["--upstreams", f'[{{"name": "reg.example", "url": "{other.url}"}}]'],
        )
        pull(mirror, alpine)
        pull(mirror, copy)
        pull(mirror, lone)
        pull(mirror, MirrorImage.of(elsewhere, "reg.example/library/alpine"))
        root = str(mirror.root)

        def tags() -> set[tuple[str, str]]:
            return {(r["repository"], r["tag"]) for r in json.loads(ls(root).stdout)}

        everything = tags()
        assert everything == {
            ("docker.io/library/alpine", "1"),
            ("docker.io/team/copy", "1"),
            ("docker.io/library/lone", "1"),
            ("reg.example/library/alpine", "1"),
        }
        for wrong, message in [
            (["--to-size", "20"], "--to-size '20' needs a unit"),
            (["--older-than", "30"], "--older-than '30' needs a unit"),
        ]:
            refused = mirror_command("prune", "--root", root, "--yes", *wrong)
            assert refused.returncode == 2 and message in refused.stderr, refused.stderr
        nothing = mirror_command("prune", "--root", root, "--yes", "nothing/here")
        assert nothing.returncode == 1
        assert "'nothing/here' (docker.io/nothing/here) matches no cached repository" in (
            nothing.stderr
        )
        unconfirmed = mirror_command("prune", "--root", root, "lone")
        assert unconfirmed.returncode == 2
        assert "would remove 1 images" in unconfirmed.stdout
        assert "docker.io/library/lone:1" in unconfirmed.stdout
        assert "run with --yes" in unconfirmed.stderr
        assert tags() == everything

        done = mirror_command("prune", "--root", root, "--yes", "alpine")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "removed 0 images" in done.stdout  # all of it is team/copy's too
        assert "untagging docker.io/library/alpine" in done.stdout
        assert tags() == everything - {("docker.io/library/alpine", "1")}
        for digest in alpine.blobs:
            assert blob_file(mirror.root, digest).exists()
        assert mirror_command("verify", "--root", root).returncode == 0
        pull(mirror, copy)

        done = mirror_command(
            "prune", "--root", root, "--yes", "reg.example/library/alpine", "library/lone"
        )
        assert "removed 2 images" in done.stdout, done.stdout
        assert tags() == {("docker.io/team/copy", "1")}
        assert not any(blob_file(mirror.root, d).exists() for d in [*elsewhere.blobs, *lone.blobs])
        assert mirror_command("verify", "--root", root).returncode == 0


class MirrorImage:
    """An image pushed to another upstream, as a client of the mirror names it."""

    @staticmethod
    def of(image: PushedImage, repo: str) -> PushedImage:
        return dataclasses.replace(image, repo=repo)


def ls(root: str) -> subprocess.CompletedProcess[str]:
    result = mirror_command("ls", "--root", root, "--json")
    assert result.returncode == 0, result.stderr
    return result


def test_warm_logs_in_and_verifies_the_mirrors_certificate(
    upstream: RegistryProcess, mirror_factory: MirrorFactory, tmp_path: Path
) -> None:
    password = "W4rm-th3-cache"
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(make_htpasswd_line("carol", password) + "\n")
    tls = tls_args(tmp_path / "tls")
    ca = tls[1]
    mirror = mirror_factory(upstream.url, args=[*tls, "--auth-htpasswd-path", str(htpasswd)])
    push_image(upstream.url, "library/app", "2", layers=[50_000], seed=31)
    url = mirror.url
    assert url.startswith("https://")

    anonymous = mirror_command("warm", "--mirror", url, "--ca-cert", ca, "app:2")
    assert anonymous.returncode == 1 and "401" in anonymous.stdout
    untrusted = mirror_command("warm", "--mirror", url, "-u", "carol", "-p", password, "app:2")
    assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stdout

    in_url = url.replace("https://", f"https://carol:{password}@")
    logged_in = mirror_command("warm", "--mirror", in_url, "--ca-cert", ca, "app:2")
    assert logged_in.returncode == 0, logged_in.stdout + logged_in.stderr
    assert "1 of 1 images warmed" in logged_in.stdout
    assert f"warmed through {url}" in logged_in.stdout
    from_stdin = mirror_command(
        "warm",
        "--mirror",
        url,
        "--ca-cert",
        ca,
        "-u",
        "carol",
        "--password-stdin",
        "app:2",
        stdin=password + "\n",
    )
    assert from_stdin.returncode == 0, from_stdin.stdout + from_stdin.stderr
    unverified = mirror_command("warm", "--mirror", in_url, "--no-tls-verify", "app:2")
    assert unverified.returncode == 0, unverified.stdout + unverified.stderr
    wrong = mirror_command(
        "warm", "--mirror", url.replace("https://", "https://carol:nope@"), "app:2", "--ca-cert", ca
    )
    assert wrong.returncode == 1
    for result in (anonymous, untrusted, logged_in, from_stdin, unverified, wrong):
        assert password not in result.stdout + result.stderr
        assert "carol:" not in result.stdout + result.stderr


def test_probe_asks_the_running_mirror_over_its_own_tls(
    upstream: RegistryProcess, mirror_factory: MirrorFactory, tmp_path: Path
) -> None:
    """``probe`` (a container's healthcheck) finds the mirror from the same settings as
    ``serve`` (address, TLS), says 200 with exit 0, anything else with exit 1."""
    maintenance = tmp_path / "maintenance"
    tls = tls_args(tmp_path / "tls")
    health_file = f"[{{file: {maintenance}, interval: 1s}}]"
    mirror = mirror_factory(upstream.url, args=[*tls, "--health-file", health_file])
    port = mirror.url.rsplit(":", 1)[1]
    settings = ["--addr", f":{port}", *tls]
    ready = mirror_command("probe", *settings)
    assert ready.returncode == 0, ready.stderr
    assert f"https://127.0.0.1:{port}/readyz: 200 ok" in ready.stdout
    assert mirror_command("probe", "livez", *settings).returncode == 0

    maintenance.touch()  # out of rotation: not ready, still alive
    deadline = time.monotonic() + 10
    while (unready := mirror_command("probe", *settings)).returncode == 0:
        assert time.monotonic() < deadline, "readyz stayed 200"
        time.sleep(0.3)
    assert unready.returncode == 1
    assert f"https://127.0.0.1:{port}/readyz: 503" in unready.stderr
    assert mirror_command("probe", "livez", *settings).returncode == 0

    closed = mirror_command("probe", "--mirror", "http://127.0.0.1:9")
    assert closed.returncode == 1
    assert "http://127.0.0.1:9/readyz: no answer" in closed.stderr
    assert "Traceback" not in closed.stderr + unready.stderr
