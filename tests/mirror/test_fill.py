"""BlobFill in-process, against a real upstream registry and a real store."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from registry_mirror.mirror import Route, UpstreamEntry
from registry_mirror.mirror.direct import DirectBlob
from registry_mirror.mirror.errors import FillFailed
from registry_mirror.mirror.fill import BlobFill
from registry_mirror.reference import Digest, parse_digest
from registry_mirror.storage import BlobInfo, FilesystemBlobStore
from registry_mirror.upstream import RegistryClient
from tests.support.images import push_image
from tests.support.registry import RegistryProcess


def test_a_client_arriving_just_after_the_commit_reads_the_committed_file(
    upstream: RegistryProcess, tmp_path: Path
) -> None:
    """The fill stays findable until its task ends, after it closed its staging file: a
    request that finds it then must still get the whole, verified blob."""
    image = push_image(upstream.url, "library/late", "1", layers=[700_000])
    digest = parse_digest(image.layer_digests[0])
    data = image.blobs[str(digest)]

    async def scenario() -> bytes:
        store = FilesystemBlobStore(tmp_path / "cache")
        store.prepare()
        committed: list[int] = []

        async def on_commit(route: Route, d: object, info: BlobInfo) -> None:
            committed.append(info.size)

        async with aiohttp.ClientSession() as session:
            entry = UpstreamEntry(
                "docker.io", RegistryClient(upstream.url, session), dockerhub=True
            )
            fill = BlobFill(digest, Route(entry, "library/late"), store, on_commit)
            await fill.start()
            assert fill.done and fill.error is None and committed == [len(data)]
            return b"".join([chunk async for chunk in fill.stream(0, None)])

    assert asyncio.run(scenario()) == data


class _Continuation:
    """An upstream answer to ``Range: bytes=<offset>-`` (what DirectBlob reads)."""

    def __init__(self, data: bytes, offset: int) -> None:
        self._data = data
        self.offset = offset
        self.size = len(data)
        self.closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        for at in range(self.offset, len(self._data), 1000):
            yield self._data[at : at + 1000]

    def close(self) -> None:
        self.closed = True


def test_a_continuation_is_verified_with_the_bytes_sent_before_it() -> None:
    data = os.urandom(10_000)
    digest = Digest.of(data)
    sent = 3_500

    async def collect(upstream_data: bytes) -> tuple[bytes, BaseException | None]:
        hasher = digest.hasher()
        hasher.update(data[:sent])  # what the client already has
        upstream = _Continuation(upstream_data, sent)
        direct = DirectBlob(digest, upstream, hasher=hasher, hashed=sent)  # type: ignore[arg-type]
        out = bytearray()
        try:
            async for chunk in direct.stream(sent, None):
                out += chunk
        except FillFailed as exc:
            return bytes(out), exc
        assert upstream.closed
        return bytes(out), None

    body, error = asyncio.run(collect(data))
    assert error is None and body == data[sent:]
    corrupt = bytearray(data)
    corrupt[7_000] ^= 0xFF
    body, error = asyncio.run(collect(bytes(corrupt)))
    assert error is not None and "hashed to" in str(error)
    assert len(body) < len(data) - sent  # the last bytes are never sent


def test_a_range_is_cut_from_an_upstream_answer_that_ignored_the_range() -> None:
    """A far range asked of upstream with ``Range: bytes=a-b``: an upstream (or a proxy
    before it) that answers 200 with the whole blob is read up to ``a`` and cut at ``b``;
    one that answers 206 from ``a`` gives the same bytes. The download is closed after."""
    data = os.urandom(10_000)
    digest = Digest.of(data)

    async def collect(offset: int, start: int, end: int) -> tuple[bytes, bool]:
        upstream = _Continuation(data, offset)
        direct = DirectBlob(digest, upstream)  # type: ignore[arg-type]
        body = b"".join([chunk async for chunk in direct.stream(start, end)])
        return body, upstream.closed

    for start, end in ((4_321, 4_321 + 100), (0, 1), (9_999, 10_000), (2_500, 7_777)):
        assert asyncio.run(collect(0, start, end)) == (data[start:end], True)  # 200, whole
        assert asyncio.run(collect(start, start, end)) == (data[start:end], True)  # 206
