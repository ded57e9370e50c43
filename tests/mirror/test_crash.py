"""Crash safety: SIGKILL in the middle of many concurrent cold pulls loses nothing and
corrupts nothing."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

import httpx

from registry_mirror.media_types import OCI_INDEX, OCI_MANIFEST, detect_manifest
from tests.conftest import MirrorFactory
from tests.support.faulty import FaultyProxy
from tests.support.images import (
    MANIFEST_ACCEPT,
    make_client,
    push_blob,
    push_image,
    push_index,
    sha256_digest,
)
from tests.support.mirror import MirrorProcess, mirror_command
from tests.support.registry import RegistryProcess
from tests.support.store import blob_file, staging_dir
from tests.support.waits import wait_until


def test_sigkill_during_cold_pulls_then_verify_is_sound(
    upstream: RegistryProcess, mirror: MirrorProcess, tmp_path: Path
) -> None:
    images = [
        push_image(upstream.url, f"crash/img{i}", "1", layers=[4_000_000, 2_000_000], seed=50 + i)
        for i in range(6)
    ]
    stop = threading.Event()
    errors: list[str] = []

    def puller(index: int) -> None:
        image = images[index % len(images)]
        with httpx.Client(base_url=mirror.url, trust_env=False, timeout=30) as client:
            while not stop.is_set():
                try:
                    client.get(f"/v2/{image.repo}/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
                    for digest in image.blobs:
                        with client.stream("GET", f"/v2/{image.repo}/blobs/{digest}") as r:
                            for _ in r.iter_bytes(65536):
                                if stop.is_set():
                                    return
                except httpx.HTTPError as exc:
                    errors.append(type(exc).__name__)
                    return

    threads = [threading.Thread(target=puller, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()

    # Kill once downloads are under way but not all finished.
    def downloads_under_way() -> bool:
        sizes = []
        for path in staging_dir(mirror.root).iterdir():
            try:
                sizes.append(path.stat().st_size)
            except FileNotFoundError:  # committed meanwhile
                continue
        return any(size > 500_000 for size in sizes)

    with contextlib.suppress(AssertionError):  # killed all the same: the clients must notice
        wait_until(downloads_under_way, 20, interval=0.01)
    mirror.kill()
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert errors, "the clients should have seen the server die"

    mirror.start()  # removes the leftovers of interrupted downloads
    assert list(staging_dir(mirror.root).iterdir()) == []
    report = mirror_command("verify", "--root", str(mirror.root), "--json")
    assert report.returncode == 0, report.stdout + report.stderr
    assert json.loads(report.stdout)["problems"] == []

    with httpx.Client(base_url=mirror.url, trust_env=False, timeout=60) as client:
        for image in images:
            manifest = client.get(
                f"/v2/{image.repo}/manifests/1", headers={"Accept": MANIFEST_ACCEPT}
            )
            assert manifest.headers["Docker-Content-Digest"] == image.digest
            for digest, data in image.blobs.items():
                assert client.get(f"/v2/{image.repo}/blobs/{digest}").content == data


def test_files_committed_without_their_index_row_are_adopted_or_removed(
    upstream: RegistryProcess, mirror: MirrorProcess
) -> None:
    mirror.stop()
    good = os.urandom(50_000)
    bad = os.urandom(50_000)
    good_digest = sha256_digest(good)
    bad_digest = sha256_digest(b"something else")
    for digest, data in ((good_digest, good), (bad_digest, bad)):
        path = blob_file(mirror.root, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    mirror.start()
    wait_until(lambda: "files indexed again" in mirror.log(), 10, interval=0.1, message=mirror.log)
    assert "1 files indexed again, 1 damaged removed" in mirror.log()
    assert not blob_file(mirror.root, bad_digest).exists()
    old = time.time() - 3600
    good_path = blob_file(mirror.root, good_digest)
    os.utime(good_path, (old, old))  # no grace period: it must be indexed, not an orphan
    report = mirror_command("verify", "--root", str(mirror.root), "--json", timeout=60)
    assert json.loads(report.stdout)["problems"] == [], report.stdout
    # An adopted file belongs to no repository yet: served where upstream confirms it
    # (a HEAD), from the cache; unknown elsewhere.
    with make_client() as pusher:
        push_blob(pusher, upstream.url, "library/x", good)
    upstream.clear_log()
    with httpx.Client(base_url=mirror.url, trust_env=False) as client:
        assert client.get(f"/v2/library/x/blobs/{good_digest}").content == good
        assert client.get(f"/v2/library/y/blobs/{good_digest}").status_code == 404
        assert upstream.count("GET", r"/blobs/") == 0
        # Linked to the repository that confirmed it, which the catalog now lists.
        assert client.get("/v2/_catalog").json() == {"repositories": ["library/x"]}


def test_manifests_committed_without_their_index_row_are_adopted_as_manifests(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    """A crash between the commit of manifests and their index rows: at the next start
    they are indexed as manifests again (media type, references), so they are served as
    such from the cache when upstream cannot send them."""
    image = push_image(upstream.url, "library/crashed", "1", layers=[3000], media="docker")
    index = push_index(upstream.url, "library/crashed", "multi", media="oci", seed=9)
    manifests = {**image.manifests(), **index.manifests()}
    with FaultyProxy(upstream.url) as proxy:
        mirror = mirror_factory(proxy.url)
        mirror.stop()
        for digest, data in [*image.blobs.items(), *((d, m[1]) for d, m in manifests.items())]:
            path = blob_file(mirror.root, digest)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        mirror.start()
        wait_until(
            lambda: "files indexed again" in mirror.log(), 15, interval=0.1, message=mirror.log
        )
        assert f"{len(image.blobs) + len(manifests)} files indexed again" in mirror.log()

        db = sqlite3.connect(mirror.root / "index.db")
        rows = dict(db.execute("SELECT digest, media_type FROM manifests").fetchall())
        assert rows == {digest: media_type for digest, (media_type, _) in manifests.items()}
        refs = db.execute(
            "SELECT child FROM manifest_refs WHERE manifest = ?", (image.digest,)
        ).fetchall()
        assert {child for (child,) in refs} == set(image.blobs)
        db.close()

        proxy.status("GET", r"/manifests/", 503)  # upstream cannot send manifests
        with httpx.Client(base_url=mirror.url, trust_env=False, timeout=30) as client:
            for digest, (media_type, body) in manifests.items():
                got = client.get(
                    f"/v2/library/crashed/manifests/{digest}", headers={"Accept": MANIFEST_ACCEPT}
                )
                assert got.status_code == 200, got.text
                assert got.headers["Content-Type"] == media_type
                assert got.content == body
        assert proxy.count("GET", r"/manifests/") == 0


def test_adoption_tells_manifests_from_other_files() -> None:
    layer = "sha256:" + "a" * 64
    untyped_image = json.dumps(
        {"schemaVersion": 2, "config": {"digest": layer}, "layers": [{"digest": layer}]}
    ).encode()
    untyped_index = json.dumps({"schemaVersion": 2, "manifests": [{"digest": layer}]}).encode()
    found = detect_manifest(untyped_image)
    assert found is not None and found.media_type == OCI_MANIFEST
    assert [str(d) for d in found.references] == [layer, layer]
    found = detect_manifest(untyped_index)
    assert found is not None and found.media_type == OCI_INDEX
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {}}).encode()
    other = json.dumps({"schemaVersion": 2, "mediaType": "text/html", "layers": []}).encode()
    for body in (config, other, b"\x1f\x8b\x08\x00gzip", b"{not json", b"[1, 2]"):
        assert detect_manifest(body) is None
