"""Generate deterministic test images and push them to a registry over plain HTTP.

Everything is deterministic from the seeds: the same call produces byte-identical layers,
configs and manifests (hence the same digests).  Layers are real ``tar.gz`` files holding one
file of incompressible pseudo-random bytes; configs carry correct ``rootfs.diff_ids``, so
``skopeo copy`` and podman accept the images.

Usage::

    img = push_image(registry.url, "library/test", "v1", layers=[4096, 1 << 20])
    idx = push_index(registry.url, "library/multi", "latest", media="docker")
    digest, media_type, body = idx.children["linux/arm64"]
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple
from urllib.parse import urlencode, urljoin

import httpx

__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_LAYER_GZIP",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "INDEX_MEDIA_TYPES",
    "MANIFEST_ACCEPT",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER_GZIP",
    "OCI_MANIFEST",
    "ChildManifest",
    "Media",
    "PushedImage",
    "blob_exists",
    "get_blob",
    "get_manifest",
    "layer_diff_id",
    "make_client",
    "make_layer",
    "push_blob",
    "push_image",
    "push_index",
    "push_manifest",
    "referenced_blobs",
    "sha256_digest",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
#: Accept header value asking for any of the four manifest types above.
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST])

Media = Literal["oci", "docker"]
Auth = tuple[str, str] | None

_MEDIA_TYPES: dict[str, tuple[str, str, str, str]] = {
    # media: (manifest, config, layer, index)
    "oci": (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP, OCI_INDEX),
    "docker": (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST_LIST),
}

_CREATED = "2026-01-01T00:00:00Z"
_MTIME = 1767225600  # 2026-01-01T00:00:00Z


class ChildManifest(NamedTuple):
    """A per-platform manifest of an index: ``digest, media_type, manifest = child``."""

    digest: str
    media_type: str
    manifest: bytes


@dataclass
class PushedImage:
    """What :func:`push_image` / :func:`push_index` pushed.

    ``digest``/``media_type``/``manifest`` describe what the tag points at (an image manifest
    or an index).  ``blobs`` maps every config and layer digest pushed (for an index: of all
    platforms, deduplicated) to its content.  ``children`` (indexes only) maps the platform
    string as given (``"linux/amd64"``) to the child manifest.
    """

    repo: str
    tag: str
    digest: str
    media_type: str
    manifest: bytes
    blobs: dict[str, bytes]
    children: dict[str, ChildManifest] = field(default_factory=dict)
    config_digest: str | None = None  # image manifests only
    layer_digests: list[str] = field(default_factory=list)  # image manifests only

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_MEDIA_TYPES

    @property
    def reference(self) -> str:
        """``repo:tag``."""
        return f"{self.repo}:{self.tag}"

    def manifests(self) -> dict[str, tuple[str, bytes]]:
        """Every manifest pushed: digest -> (media type, body); the top one first."""
        out = {self.digest: (self.media_type, self.manifest)}
        for child in self.children.values():
            out[child.digest] = (child.media_type, child.manifest)
        return out


# ---------------------------------------------------------------------- content


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _derive(*parts: object) -> int:
    """A 64-bit seed derived deterministically from ``parts``."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big")


def _layer_tar(size: int, seed: int) -> bytes:
    content = random.Random(seed).randbytes(size)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(f"layer-{seed & 0xFFFFFFFFFFFFFFFF:016x}.bin")
        info.size = size
        info.mode = 0o644
        info.mtime = _MTIME
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _layer(size: int, seed: int) -> tuple[bytes, str]:
    """(gzip-compressed layer, diff_id) for a layer."""
    tar = _layer_tar(size, seed)
    return gzip.compress(tar, compresslevel=1, mtime=0), sha256_digest(tar)


def make_layer(size: int, seed: int) -> bytes:
    """A gzip-compressed tar holding one file of ``size`` incompressible bytes.

    Deterministic from ``seed``; the blob is a little larger than ``size`` (tar and gzip
    framing, about 1.5 KiB plus 0.03%).
    """
    return _layer(size, seed)[0]


def layer_diff_id(layer: bytes) -> str:
    """The diff_id (sha256 of the uncompressed tar) of a gzip-compressed layer."""
    return sha256_digest(gzip.decompress(layer))


def _json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=False).encode() + b"\n"


def _parse_platform(platform: str) -> dict[str, str]:
    parts = platform.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"platform must be OS/ARCH[/VARIANT], got {platform!r}")
    out = {"architecture": parts[1], "os": parts[0]}
    if len(parts) == 3:
        out["variant"] = parts[2]
    elif parts[1] == "arm64":
        out["variant"] = "v8"
    return out


@dataclass
class _BuiltImage:
    manifest: bytes
    media_type: str
    digest: str
    config_digest: str
    layer_digests: list[str]
    blobs: dict[str, bytes]  # config first, then layers in order
    platform: dict[str, str]


def _build_image(
    layer_specs: Sequence[tuple[int, int]],
    media: Media,
    platform: str,
    labels: Mapping[str, str] | None = None,
) -> _BuiltImage:
    if media not in _MEDIA_TYPES:
        raise ValueError(f"media must be 'oci' or 'docker', got {media!r}")
    manifest_type, config_type, layer_type, _ = _MEDIA_TYPES[media]
    plat = _parse_platform(platform)

    layers: list[tuple[bytes, str]] = [_layer(size, seed) for size, seed in layer_specs]
    config: dict[str, Any] = {
        "created": _CREATED,
        "architecture": plat["architecture"],
        "os": plat["os"],
    }
    if "variant" in plat:
        config["variant"] = plat["variant"]
    config["config"] = {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["/bin/sh"],
        "WorkingDir": "/",
        "Labels": dict(labels or {}),
    }
    config["rootfs"] = {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]}
    config["history"] = [
        {"created": _CREATED, "created_by": f"registry-mirror test layer {i} ({size} bytes)"}
        for i, (size, _) in enumerate(layer_specs)
    ]
    config_bytes = _json(config)
    config_digest = sha256_digest(config_bytes)

    blobs: dict[str, bytes] = {config_digest: config_bytes}
    layer_descs = []
    layer_digests = []
    for blob, _ in layers:
        d = sha256_digest(blob)
        blobs[d] = blob
        layer_digests.append(d)
        layer_descs.append({"mediaType": layer_type, "digest": d, "size": len(blob)})
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {
                "mediaType": config_type,
                "digest": config_digest,
                "size": len(config_bytes),
            },
            "layers": layer_descs,
        }
    )
    return _BuiltImage(
        manifest=manifest,
        media_type=manifest_type,
        digest=sha256_digest(manifest),
        config_digest=config_digest,
        layer_digests=layer_digests,
        blobs=blobs,
        platform=plat,
    )


def referenced_blobs(manifest: bytes) -> list[str]:
    """Config and layer digests referenced by an image manifest (config first)."""
    doc = json.loads(manifest)
    out = [doc["config"]["digest"]] if "config" in doc else []
    out.extend(layer["digest"] for layer in doc.get("layers", []))
    return out


# ---------------------------------------------------------------------- HTTP


def make_client(auth: Auth = None, timeout: float = 120.0) -> httpx.Client:
    """A sync httpx client for talking to a local registry (ignores proxy env vars)."""
    return httpx.Client(
        auth=httpx.BasicAuth(*auth) if auth else None,
        timeout=httpx.Timeout(timeout),
        trust_env=False,
    )


def _v2(base_url: str, repo: str, rest: str) -> str:
    return f"{base_url.rstrip('/')}/v2/{repo}/{rest}"


def _check(resp: httpx.Response, *expected: int) -> None:
    if resp.status_code not in expected:
        raise RuntimeError(
            f"{resp.request.method} {resp.request.url} -> {resp.status_code}: {resp.text[:500]}"
        )


def blob_exists(client: httpx.Client, base_url: str, repo: str, digest: str) -> bool:
    """HEAD the blob: True on 200, False on 404."""
    resp = client.head(_v2(base_url, repo, f"blobs/{digest}"))
    _check(resp, 200, 404)
    return resp.status_code == 200


def push_blob(client: httpx.Client, base_url: str, repo: str, data: bytes) -> str:
    """Upload ``data`` as a blob (monolithic POST + PUT); skipped if HEAD finds it.

    Returns the digest (``sha256:...``).
    """
    digest = sha256_digest(data)
    if blob_exists(client, base_url, repo, digest):
        return digest
    resp = client.post(_v2(base_url, repo, "blobs/uploads/"))
    _check(resp, 202)
    location = urljoin(base_url.rstrip("/") + "/", resp.headers["Location"])
    # Keep the upload's own query (_state=...): httpx's params= would replace it.
    sep = "&" if "?" in location else "?"
    resp = client.put(
        f"{location}{sep}{urlencode({'digest': digest})}",
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    _check(resp, 201)
    returned = resp.headers.get("Docker-Content-Digest")
    if returned is not None and returned != digest:
        raise RuntimeError(f"registry stored blob as {returned}, expected {digest}")
    return digest


def push_manifest(  # noqa: PLR0917 - mirrors the registry API's arguments
    client: httpx.Client, base_url: str, repo: str, ref: str, body: bytes, media_type: str
) -> str:
    """PUT a manifest under ``ref`` (tag or digest); returns its digest."""
    digest = sha256_digest(body)
    resp = client.put(
        _v2(base_url, repo, f"manifests/{ref}"),
        content=body,
        headers={"Content-Type": media_type},
    )
    _check(resp, 201)
    returned = resp.headers.get("Docker-Content-Digest")
    if returned is not None and returned != digest:
        raise RuntimeError(f"registry stored manifest as {returned}, expected {digest}")
    return digest


def get_manifest(
    client: httpx.Client, base_url: str, repo: str, ref: str, accept: str = MANIFEST_ACCEPT
) -> tuple[bytes, str, str]:
    """GET a manifest: (body, Content-Type, Docker-Content-Digest or computed digest)."""
    resp = client.get(_v2(base_url, repo, f"manifests/{ref}"), headers={"Accept": accept})
    _check(resp, 200)
    body = resp.content
    media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
    return body, media_type, resp.headers.get("Docker-Content-Digest", sha256_digest(body))


def get_blob(client: httpx.Client, base_url: str, repo: str, digest: str) -> bytes:
    """GET a blob's content (following redirects)."""
    resp = client.get(_v2(base_url, repo, f"blobs/{digest}"), follow_redirects=True)
    _check(resp, 200)
    return resp.content


def _push_built(client: httpx.Client, base_url: str, repo: str, ref: str, img: _BuiltImage) -> None:
    for data in img.blobs.values():
        push_blob(client, base_url, repo, data)
    push_manifest(client, base_url, repo, ref, img.manifest, img.media_type)


def push_image(
    base_url: str,
    repo: str,
    tag: str,
    *,
    layers: Sequence[int] = (1024, 4096),
    media: Media = "oci",
    seed: int = 0,
    platform: str = "linux/amd64",
    auth: Auth = None,
    labels: Mapping[str, str] | None = None,
    client: httpx.Client | None = None,
) -> PushedImage:
    """Build and push a single-platform image; tag it ``tag``.

    ``layers`` are the uncompressed file sizes of the layers (bottom first); layer ``i`` is
    generated from a seed derived from ``(seed, i)``.  ``platform`` is ``OS/ARCH[/VARIANT]``.
    ``labels`` go into the config (use them to make otherwise identical images differ).
    """
    img = _build_image(
        [(size, _derive("layer", seed, i)) for i, size in enumerate(layers)],
        media,
        platform,
        labels,
    )
    with _client_ctx(client, auth) as c:
        _push_built(c, base_url, repo, tag, img)
    return PushedImage(
        repo=repo,
        tag=tag,
        digest=img.digest,
        media_type=img.media_type,
        manifest=img.manifest,
        blobs=dict(img.blobs),
        config_digest=img.config_digest,
        layer_digests=list(img.layer_digests),
    )


def push_index(
    base_url: str,
    repo: str,
    tag: str,
    *,
    platforms: Iterable[str] = ("linux/amd64", "linux/arm64"),
    layers: Sequence[int] = (2048, 4096),
    media: Media = "oci",
    seed: int = 0,
    auth: Auth = None,
    labels: Mapping[str, str] | None = None,
    client: httpx.Client | None = None,
) -> PushedImage:
    """Build and push a multi-platform image: one image per platform, then an index.

    Every platform's image has ``len(layers)`` layers; layer 0 (the base) is the same blob
    for all platforms (exercises cross-platform dedup), the others differ per platform.
    Children are pushed by digest; the OCI index / Docker manifest list is tagged ``tag``.
    """
    if media not in _MEDIA_TYPES:
        raise ValueError(f"media must be 'oci' or 'docker', got {media!r}")
    index_type = _MEDIA_TYPES[media][3]
    platform_list = list(platforms)
    if len(set(platform_list)) != len(platform_list):
        raise ValueError(f"duplicate platforms in {platform_list}")

    built: dict[str, _BuiltImage] = {}
    for plat in platform_list:
        specs = [
            (size, _derive("base", seed) if i == 0 else _derive("layer", seed, plat, i))
            for i, size in enumerate(layers)
        ]
        built[plat] = _build_image(specs, media, plat, labels)

    manifests = []
    for img in built.values():
        manifests.append(
            {
                "mediaType": img.media_type,
                "digest": img.digest,
                "size": len(img.manifest),
                "platform": img.platform,
            }
        )
    index = _json({"schemaVersion": 2, "mediaType": index_type, "manifests": manifests})

    blobs: dict[str, bytes] = {}
    with _client_ctx(client, auth) as c:
        for img in built.values():
            _push_built(c, base_url, repo, img.digest, img)
            blobs.update(img.blobs)
        digest = push_manifest(c, base_url, repo, tag, index, index_type)
    return PushedImage(
        repo=repo,
        tag=tag,
        digest=digest,
        media_type=index_type,
        manifest=index,
        blobs=blobs,
        children={
            plat: ChildManifest(img.digest, img.media_type, img.manifest)
            for plat, img in built.items()
        },
    )


@contextlib.contextmanager
def _client_ctx(client: httpx.Client | None, auth: Auth) -> Iterator[httpx.Client]:
    """Use the given client, or a temporary one closed on exit."""
    if client is not None:
        yield client
        return
    with make_client(auth) as own:
        yield own
