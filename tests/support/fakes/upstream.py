"""An upstream registry in memory, written against ``upstream.base`` alone.

:class:`FakeUpstream` answers the :class:`~registry_mirror.upstream.Upstream` protocol
from repositories in dicts (tags → manifests, blobs), as a registry does: a HEAD names
the digest, media type and size; blobs leave in chunks from any offset; every failure
is one of the typed upstream errors. It counts and records every call (so a test can
say "exactly one download", "the tag was asked again") and has switches for faults:
an outage, a rate limit, a delay, bytes that do not match their digest, a body cut
part way.

:func:`make_image` and :func:`make_index` build small, deterministic OCI or Docker
images (config, layers, manifest; an index of several platforms) for
:meth:`FakeUpstream.put_image` and :meth:`FakeUpstream.put_index`.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Final

from registry_mirror.media_types import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from registry_mirror.reference import Digest, parse_digest
from registry_mirror.upstream import (
    BlobStream,
    ManifestInfo,
    TagList,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)

__all__ = [
    "DEFAULT_PLATFORMS",
    "Call",
    "FakeBlobStream",
    "FakeImage",
    "FakeIndex",
    "FakeUpstream",
    "make_image",
    "make_index",
]

CHUNK: Final = 16 * 1024
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
OCI_LAYER: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER: Final = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DEFAULT_PLATFORMS: Final = ("linux/amd64", "linux/arm64")


# --- images ----------------------------------------------------------------------


@dataclass(frozen=True)
class FakeImage:
    """One image: its manifest (exact bytes), config and layers."""

    manifest: bytes
    media_type: str
    config: bytes
    layers: tuple[bytes, ...]
    platform: str

    @property
    def digest(self) -> Digest:
        return Digest.of(self.manifest)

    @property
    def config_digest(self) -> Digest:
        return Digest.of(self.config)

    @property
    def layer_digests(self) -> list[Digest]:
        return [Digest.of(layer) for layer in self.layers]

    @property
    def blobs(self) -> dict[Digest, bytes]:
        """Config and layers by digest."""
        return {Digest.of(data): data for data in (self.config, *self.layers)}


@dataclass(frozen=True)
class FakeIndex:
    """An index (OCI) or manifest list (Docker) of one image per platform."""

    manifest: bytes
    media_type: str
    images: dict[str, FakeImage]  # platform ("linux/amd64") → image

    @property
    def digest(self) -> Digest:
        return Digest.of(self.manifest)


def _descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": str(Digest.of(data)), "size": len(data)}


def make_image(
    seed: str = "image",
    *,
    layers: Iterable[int] = (3000, 50_000),
    oci: bool = True,
    platform: str = "linux/amd64",
) -> FakeImage:
    """A small image whose bytes depend on ``seed`` alone (layers of these sizes)."""
    rng = random.Random(f"{seed}/{platform}")
    os_name, _, arch = platform.partition("/")
    config = json.dumps(
        {"architecture": arch, "os": os_name, "rootfs": {"type": "layers"}, "seed": seed},
        sort_keys=True,
    ).encode()
    blobs = tuple(rng.randbytes(size) for size in layers)
    layer_type = OCI_LAYER if oci else DOCKER_LAYER
    media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": _descriptor(OCI_CONFIG if oci else DOCKER_CONFIG, config),
            "layers": [_descriptor(layer_type, blob) for blob in blobs],
        },
        indent=3,  # not the canonical form: the exact bytes must survive the mirror
    ).encode()
    return FakeImage(manifest, media_type, config, blobs, platform)


def make_index(
    seed: str = "index",
    *,
    platforms: Iterable[str] = DEFAULT_PLATFORMS,
    layers: Iterable[int] = (2000, 20_000),
    oci: bool = True,
) -> FakeIndex:
    """An index of one image per platform (each made by :func:`make_image`)."""
    sizes = tuple(layers)
    images = {p: make_image(seed, layers=sizes, oci=oci, platform=p) for p in platforms}
    entries = []
    for name, image in images.items():
        os_name, _, rest = name.partition("/")
        arch, _, variant = rest.partition("/")
        described = _descriptor(image.media_type, image.manifest)
        described["platform"] = {"os": os_name, "architecture": arch} | (
            {"variant": variant} if variant else {}
        )
        entries.append(described)
    media_type = OCI_INDEX if oci else DOCKER_LIST
    body = json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": entries})
    return FakeIndex(body.encode(), media_type, images)


# --- the upstream ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One call the mirror made: method name, repository, tag or digest, blob offset."""

    method: str  # head_manifest, get_manifest, head_blob, get_blob, list_tags
    repo: str
    reference: str = ""
    offset: int = 0
    end: int | None = None  # a blob range's end (exclusive)


@dataclass
class _Repository:
    tags: dict[str, Digest] = field(default_factory=dict)
    manifests: dict[Digest, tuple[str, bytes]] = field(default_factory=dict)
    blobs: dict[Digest, bytes] = field(default_factory=dict)


@dataclass
class _Cut:
    after: int  # bytes of body each cut download sends before it breaks
    times: int | None  # how many downloads are cut; None: every one


class FakeBlobStream:
    """An open download: the bytes from ``offset`` in chunks, maybe cut part way."""

    def __init__(
        self,
        owner: FakeUpstream,
        data: bytes,
        offset: int,
        *,
        end: int | None = None,
        cut_after: int | None,
        delay: float,
    ) -> None:
        self.size: int | None = len(data)
        self.offset = offset
        self.end = len(data) if end is None else min(end, len(data))
        self.closed = False
        self._owner = owner
        self._data = data
        self._cut_after = cut_after
        self._delay = delay
        owner.open_streams += 1

    async def chunks(self) -> AsyncIterator[bytes]:
        sent = 0
        for start in range(self.offset, self.end, self._owner.chunk_size):
            if self._delay:
                await asyncio.sleep(self._delay)
            chunk = self._data[start : min(start + self._owner.chunk_size, self.end)]
            if self._cut_after is not None and sent + len(chunk) > self._cut_after:
                part = chunk[: self._cut_after - sent]
                if part:
                    yield part
                raise UpstreamUnavailable(f"connection reset after {self._cut_after} bytes")
            sent += len(chunk)
            yield chunk
            await asyncio.sleep(0)  # a real body arrives in pieces: other tasks run between
            hold = self._owner.hold
            if hold is not None and start == self.offset:
                await hold.wait()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._owner.open_streams -= 1


class FakeUpstream:
    """A registry in memory.

    Fault switches (plain attributes, set them at any time):

    - ``down``: every call raises :class:`UpstreamUnavailable`; ``down_for``: the calls of
      these methods only (``{"get_manifest"}``: HEADs answer, downloads fail);
    - ``rate_limited``: every call raises :class:`UpstreamRateLimited` (``retry_after``);
    - ``delay``: seconds every call waits before it answers, and ``chunk_delay`` before
      each blob chunk, so that concurrent requests really overlap;
    - ``hold``: an event every blob download waits for after its first chunk (the mirror
      answers its clients then, and they follow it; nothing more arrives, the download
      stays in progress, until the test sets it);
    - :meth:`mismatch`: a blob's bytes leave with one byte changed (same length);
    - :meth:`cut`: downloads of a blob break (``UpstreamUnavailable``) part way;
    - ``announce_digests = False``: manifest HEADs and GETs name no digest.

    ``calls`` lists every call in order; :meth:`count` counts them. ``open_streams`` is
    how many blob downloads are open (not yet closed by the mirror).
    """

    def __init__(self, url: str = "https://upstream.test", *, chunk_size: int = CHUNK) -> None:
        self._url = url
        self.chunk_size = chunk_size
        self.repositories: dict[str, _Repository] = {}
        self.calls: list[Call] = []
        self.down = False
        self.down_for: set[str] = set()
        self.rate_limited = False
        self.retry_after: int | None = 30
        self.delay = 0.0
        self.chunk_delay = 0.0
        self.hold: asyncio.Event | None = None
        self.announce_digests = True
        self.open_streams = 0
        self._mismatched: set[Digest] = set()
        self._cuts: dict[Digest, _Cut] = {}
        self._called = asyncio.Event()  # set (and replaced) at every call

    def __repr__(self) -> str:
        return f"<FakeUpstream {self._url} {sorted(self.repositories)}>"

    # -- the Upstream protocol --

    @property
    def url(self) -> str:
        return self._url

    def proxy_description(self) -> str | None:
        return None

    async def head_manifest(self, repo: str, reference: str) -> ManifestInfo:
        await self._enter(Call("head_manifest", repo, reference))
        info, _ = self._manifest(repo, reference)
        return info

    async def get_manifest(self, repo: str, reference: str) -> tuple[ManifestInfo, bytes]:
        await self._enter(Call("get_manifest", repo, reference))
        return self._manifest(repo, reference)

    async def head_blob(self, repo: str, digest: Digest) -> int | None:
        await self._enter(Call("head_blob", repo, str(digest)))
        return len(self._blob(repo, digest))

    async def get_blob(
        self, repo: str, digest: Digest, offset: int = 0, end: int | None = None
    ) -> BlobStream:
        await self._enter(Call("get_blob", repo, str(digest), offset, end))
        data = self._blob(repo, digest)
        if digest in self._mismatched:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        cut_after = None
        cut = self._cuts.get(digest)
        if cut is not None and cut.times != 0:
            cut_after = cut.after
            if cut.times is not None:
                cut.times -= 1
        return FakeBlobStream(
            self, data, offset, end=end, cut_after=cut_after, delay=self.chunk_delay
        )

    async def list_tags(self, repo: str) -> TagList:
        await self._enter(Call("list_tags", repo))
        repository = self.repositories.get(repo)
        if repository is None:
            raise UpstreamNotFound(f"repository {repo}: not found upstream")
        return TagList(sorted(repository.tags))

    # -- content --

    def _repository(self, repo: str) -> _Repository:
        return self.repositories.setdefault(repo, _Repository())

    def put_blob(self, repo: str, data: bytes) -> Digest:
        digest = Digest.of(data)
        self._repository(repo).blobs[digest] = data
        return digest

    def put_manifest(
        self, repo: str, body: bytes, media_type: str, tag: str | None = None
    ) -> Digest:
        digest = Digest.of(body)
        repository = self._repository(repo)
        repository.manifests[digest] = (media_type, body)
        if tag is not None:
            repository.tags[tag] = digest
        return digest

    def put_image(self, repo: str, tag: str | None, image: FakeImage | None = None) -> FakeImage:
        """``image`` (a fresh :func:`make_image` of ``repo`` if none) with its blobs."""
        image = image or make_image(repo)
        for data in (image.config, *image.layers):
            self.put_blob(repo, data)
        self.put_manifest(repo, image.manifest, image.media_type, tag)
        return image

    def put_index(self, repo: str, tag: str | None, index: FakeIndex | None = None) -> FakeIndex:
        """``index`` (a fresh two-platform :func:`make_index` if none), its images, blobs."""
        index = index or make_index(repo)
        for image in index.images.values():
            self.put_image(repo, None, image)
        self.put_manifest(repo, index.manifest, index.media_type, tag)
        return index

    def tag(self, repo: str, tag: str, digest: Digest) -> None:
        self._repository(repo).tags[tag] = digest

    def untag(self, repo: str, tag: str) -> None:
        del self._repository(repo).tags[tag]

    # -- faults and counters --

    def mismatch(self, digest: Digest) -> None:
        """Downloads of ``digest`` send other bytes (one changed, same length)."""
        self._mismatched.add(digest)

    def cut(self, digest: Digest, after: int, times: int | None = None) -> None:
        """The next ``times`` downloads of ``digest`` (all, if None) break after ``after``
        bytes of their body."""
        self._cuts[digest] = _Cut(after, times)

    def count(
        self, method: str | None = None, repo: str | None = None, reference: object = None
    ) -> int:
        """Calls of ``method`` (any, if None), for ``repo`` and ``reference`` if given."""
        return sum(
            1
            for call in self.calls
            if (method is None or call.method == method)
            and (repo is None or call.repo == repo)
            and (reference is None or call.reference == str(reference))
        )

    def counts(self) -> Counter[str]:
        """Calls by method."""
        return Counter(call.method for call in self.calls)

    def reset_counts(self) -> None:
        self.calls.clear()

    async def called(self, method: str, times: int = 1) -> None:
        """Wait until ``method`` has been called ``times`` times."""
        while self.count(method) < times:
            await self._called.wait()

    async def _enter(self, call: Call) -> None:
        self.calls.append(call)
        called, self._called = self._called, asyncio.Event()
        called.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        else:
            await asyncio.sleep(0)
        if self.down or call.method in self.down_for:
            raise UpstreamUnavailable(f"{self._url}: connection refused")
        if self.rate_limited:
            raise UpstreamRateLimited(f"{self._url}: 429 Too Many Requests", self.retry_after)

    def _manifest(self, repo: str, reference: str) -> tuple[ManifestInfo, bytes]:
        repository = self.repositories.get(repo) or _Repository()
        if ":" in reference:
            digest: Digest | None = parse_digest(reference)
        else:
            digest = repository.tags.get(reference)
        found = repository.manifests.get(digest) if digest is not None else None
        if found is None or digest is None:
            raise UpstreamNotFound(f"manifest {repo}:{reference}: not found upstream")
        media_type, body = found
        announced = digest if self.announce_digests else None
        return ManifestInfo(announced, media_type, len(body)), body

    def _blob(self, repo: str, digest: Digest) -> bytes:
        repository = self.repositories.get(repo)
        data = repository.blobs.get(digest) if repository is not None else None
        if data is None:
            raise UpstreamNotFound(f"blob {repo}@{digest}: not found upstream")
        return data
