"""The test images pushed to the upstream before the scenarios run."""

from __future__ import annotations

import hashlib
import json
import random
import tarfile
import time
import zlib
from dataclasses import dataclass

from rich.console import Console

from bench.config import DIRECT_NAME, MIB, MIRROR_NAME, REGISTRY_NAME, Config
from tests.support.images import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    PushedImage,
    make_client,
    push_blob,
    push_image,
    push_manifest,
)

__all__ = ["Image", "Images", "big_layer", "push_big_image", "push_images"]


@dataclass(frozen=True)
class Image:
    """What was pushed to the upstream (the bytes themselves are not kept)."""

    repo: str
    tag: str
    digest: str
    media_type: str
    blobs: dict[str, int]  # digest -> size, config first

    @classmethod
    def of(cls, pushed: PushedImage) -> Image:
        return cls(
            pushed.repo,
            pushed.tag,
            pushed.digest,
            pushed.media_type,
            {d: len(b) for d, b in pushed.blobs.items()},
        )

    @property
    def ref(self) -> str:
        return f"{self.repo}:{self.tag}"

    @property
    def total(self) -> int:
        return sum(self.blobs.values())


@dataclass
class Images:
    big: Image  # one big layer (blob throughput)
    small: Image  # two small layers (manifest rows)
    pulls: dict[str, Image]  # per proxy (cold/warm pull), and one pulled from the upstream
    herds: dict[str, Image]  # per proxy (concurrent cold clients)


def big_layer(size: int, seed: int) -> tuple[bytes, str]:
    """(gzip-compressed tar holding one file of ``size`` random bytes, diff_id).

    Like the test support's layers, but generated in chunks: ``random.randbytes`` cannot make
    256 MiB at once, and level-1 gzip of random data keeps the blob about ``size`` bytes.
    """
    rng = random.Random(seed)
    info = tarfile.TarInfo(f"big-{seed}.bin")
    info.size, info.mode, info.mtime = size, 0o644, 1767225600
    header = info.tobuf(tarfile.USTAR_FORMAT)
    tail = b"\0" * (-size % 512) + b"\0" * 1024
    tail += b"\0" * (-(len(header) + size + len(tail)) % tarfile.RECORDSIZE)
    diff = hashlib.sha256()
    gz = zlib.compressobj(1, zlib.DEFLATED, 31)
    out: list[bytes] = []
    for part in (
        header,
        *(rng.randbytes(min(16 * MIB, size - o)) for o in range(0, size, 16 * MIB)),
        tail,
    ):
        diff.update(part)
        out.append(gz.compress(part))
    out.append(gz.flush())
    return b"".join(out), "sha256:" + diff.hexdigest()


def push_big_image(
    base_url: str, repo: str, tag: str, *, size: int, media: str, seed: int
) -> Image:
    """Push a one-layer image whose layer holds ``size`` random bytes."""
    manifest_type, config_type, layer_type = (
        (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP)
        if media == "oci"
        else (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP)
    )
    layer, diff_id = big_layer(size, seed)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    with make_client(timeout=600) as client:
        config_digest = push_blob(client, base_url, repo, config)
        layer_digest = push_blob(client, base_url, repo, layer)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": manifest_type,
                "config": {"mediaType": config_type, "digest": config_digest, "size": len(config)},
                "layers": [{"mediaType": layer_type, "digest": layer_digest, "size": len(layer)}],
            }
        ).encode()
        digest = push_manifest(client, base_url, repo, tag, manifest, manifest_type)
    return Image(
        repo, tag, digest, manifest_type, {config_digest: len(config), layer_digest: len(layer)}
    )


def push_images(cfg: Config, upstream_url: str, console: Console) -> Images:
    """Push every test image to the upstream; returns their summaries."""
    media = cfg.media
    started = time.monotonic()
    big = push_big_image(
        upstream_url, "bench/big", "v1", size=cfg.blob_mib * MIB, media=media, seed=101
    )
    small = Image.of(
        push_image(upstream_url, "bench/small", "v1", layers=[1024, 4096], media=media, seed=102)
    )
    layer = cfg.pull_mib * MIB // cfg.pull_layers
    pulls = {
        name: Image.of(
            push_image(
                upstream_url,
                f"bench/pull-{slug}",
                "v1",
                layers=[layer] * cfg.pull_layers,
                media=media,
                seed=seed,
            )
        )
        for name, slug, seed in (
            (MIRROR_NAME, "mirror", 201),
            (REGISTRY_NAME, "registry2", 202),
            (DIRECT_NAME, "direct", 203),
        )
    }
    herds = {
        name: Image.of(
            push_image(
                upstream_url,
                f"bench/herd-{slug}",
                "v1",
                layers=[cfg.herd_layer_mib * MIB] * cfg.herd_layers,
                media=media,
                seed=seed,
            )
        )
        for name, slug, seed in ((MIRROR_NAME, "mirror", 301), (REGISTRY_NAME, "registry2", 302))
    }
    console.print(f"pushed test images to the upstream in {time.monotonic() - started:.1f}s")
    return Images(big, small, pulls, herds)
