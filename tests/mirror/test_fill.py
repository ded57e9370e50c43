"""BlobFill in-process, against a real upstream registry and a real store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from registry_mirror.mirror import Route, UpstreamEntry
from registry_mirror.mirror.fill import BlobFill
from registry_mirror.reference import parse_digest
from registry_mirror.storage import BlobInfo, FilesystemBlobStore
from registry_mirror.upstream import Upstream
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
            entry = UpstreamEntry("docker.io", Upstream(upstream.url, session), dockerhub=True)
            fill = BlobFill(digest, Route(entry, "library/late"), store, on_commit)
            await fill.start()
            assert fill.done and fill.error is None and committed == [len(data)]
            return b"".join([chunk async for chunk in fill.stream(0, None)])

    assert asyncio.run(scenario()) == data
