"""A store with no local files (the memory store: blobs leave as ``Stream()``) serves a
whole pull end to end: every cache hit is streamed from the store's ``open``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from registry_mirror.media_types import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from registry_mirror.storage import LocalFiles
from tests.inprocess.harness import InProcessMirror
from tests.support.fakes import FakeUpstream
from tests.support.waits import wait_until_async

Mirror = Callable[[], AbstractAsyncContextManager[InProcessMirror]]

ACCEPT = {"Accept": f"{OCI_INDEX}, {OCI_MANIFEST}, {DOCKER_MANIFEST}"}


async def pull(m: InProcessMirror, repo: str, tag: str) -> dict[str, bytes]:
    """What a client does: the tag, the platform's manifest, its config and layers."""
    pulled: dict[str, bytes] = {}
    index = await m.client.get(f"/v2/{repo}/manifests/{tag}", headers=ACCEPT)
    assert index.status == 200
    pulled[index.headers["Docker-Content-Digest"]] = await index.read()
    entries = (await index.json(content_type=None))["manifests"]
    child = next(e for e in entries if e["platform"]["architecture"] == "amd64")["digest"]
    manifest = await m.client.get(f"/v2/{repo}/manifests/{child}", headers=ACCEPT)
    assert manifest.status == 200
    pulled[child] = await manifest.read()
    doc = await manifest.json(content_type=None)
    for descriptor in [doc["config"], *doc["layers"]]:
        blob = await m.client.get(f"/v2/{repo}/blobs/{descriptor['digest']}")
        assert blob.status == 200
        pulled[descriptor["digest"]] = await blob.read()
    return pulled


async def test_a_pull_end_to_end(mirror: Mirror, upstream: FakeUpstream) -> None:
    index = upstream.put_index("library/app", "1")
    image = index.images["linux/amd64"]
    expected = {
        str(index.digest): index.manifest,
        str(image.digest): image.manifest,
        **{str(d): data for d, data in image.blobs.items()},
    }
    async with mirror() as m:
        assert not isinstance(m.store, LocalFiles)
        assert await pull(m, "library/app", "1") == expected  # cold
        assert {str(d): data for d, data in m.store.blobs.items()} == expected
        assert m.store.opened == []  # a miss is streamed from the fill
        downloads = upstream.count("get_blob")
        assert downloads == len(image.blobs)
        assert await pull(m, "library/app", "1") == expected  # warm
        assert upstream.count("get_blob") == downloads
        assert m.store.opened == [(d, 0, len(data)) for d, data in image.blobs.items()]
        layer, data = image.layer_digests[1], image.layers[1]
        ranged = await m.client.get(f"/v2/library/app/blobs/{layer}", headers={"Range": "bytes=7-"})
        assert ranged.status == 206
        assert await ranged.read() == data[7:]
        assert m.store.opened[-1] == (layer, 7, len(data))


async def test_a_miss_is_answered_on_the_verdict_not_on_durability(
    mirror: Mirror, upstream: FakeUpstream
) -> None:
    """The client's last bytes wait for the digest to match, not for the store to make
    the blob durable and publish it (a slow disk)."""
    data = bytes(range(256)) * 4096  # 1 MiB
    digest = upstream.put_blob("library/slow", data)
    async with mirror() as m:
        gate = m.store.publish_gate = asyncio.Event()
        response = await asyncio.wait_for(m.client.get(f"/v2/library/slow/blobs/{digest}"), 10)
        assert response.status == 200
        assert await asyncio.wait_for(response.read(), 10) == data  # complete, verified
        assert digest not in m.store.blobs  # ... while the store is still publishing
        gate.set()
        await wait_until_async(lambda: digest in m.store.blobs, message="never published")
        assert m.store.blobs[digest] == data
