"""The fake upstream answers as a registry does, and its switches do what they say."""

from __future__ import annotations

import json

import pytest

from registry_mirror.media_types import OCI_INDEX, OCI_MANIFEST, parse_manifest
from registry_mirror.reference import Digest
from registry_mirror.upstream import (
    ManifestInfo,
    Upstream,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from tests.support.fakes import FakeUpstream, make_image, make_index


async def read(upstream: Upstream, repo: str, digest: Digest, offset: int = 0) -> bytes:
    stream = await upstream.get_blob(repo, digest, offset)
    try:
        assert stream.offset == offset
        return b"".join([chunk async for chunk in stream.chunks()])
    finally:
        stream.close()


async def test_manifests_and_blobs() -> None:
    fake = FakeUpstream(chunk_size=1000)
    upstream: Upstream = fake  # what says the fake is an Upstream (mypy)
    index = fake.put_index("library/app", "1", make_index("app"))
    image = index.images["linux/amd64"]
    head = await upstream.head_manifest("library/app", "1")
    assert head == ManifestInfo(index.digest, OCI_INDEX, len(index.manifest))
    info, body = await upstream.get_manifest("library/app", str(image.digest))
    assert (info, body) == (ManifestInfo(image.digest, OCI_MANIFEST, len(body)), image.manifest)
    parsed = parse_manifest(index.manifest, OCI_INDEX)
    assert [str(p) for p, _, _ in parsed.platforms] == ["linux/amd64", "linux/arm64"]
    assert parse_manifest(image.manifest, OCI_MANIFEST).references == list(image.blobs)
    assert json.loads(image.config)["architecture"] == "amd64"
    layer = image.layer_digests[1]
    assert await upstream.head_blob("library/app", layer) == len(image.layers[1])
    assert await read(upstream, "library/app", layer) == image.layers[1]
    assert await read(upstream, "library/app", layer, 1500) == image.layers[1][1500:]
    assert await upstream.list_tags("library/app") == ["1"]
    for call in (
        upstream.head_manifest("library/app", "2"),
        upstream.head_blob("library/other", layer),
        upstream.list_tags("library/other"),
    ):
        with pytest.raises(UpstreamNotFound):
            await call
    assert fake.count("head_manifest") == 2
    assert fake.count("get_blob", "library/app", layer) == 2
    assert fake.open_streams == 0
    assert make_image("app", oci=False).manifest != make_image("app").manifest
    assert make_image("a").digest != make_image("b").digest
    assert make_image("a").digest == make_image("a").digest


async def test_fault_switches() -> None:
    fake = FakeUpstream(chunk_size=1000)
    image = fake.put_image("library/app", "1", make_image(layers=[5000]))
    layer, data = image.layer_digests[0], image.layers[0]
    fake.mismatch(layer)
    changed = await read(fake, "library/app", layer)
    assert len(changed) == len(data)
    assert changed != data
    fake = FakeUpstream(chunk_size=1000)
    fake.put_image("library/app", "1", image)
    fake.cut(layer, after=2500, times=1)
    stream = await fake.get_blob("library/app", layer)
    received = bytearray()
    with pytest.raises(UpstreamUnavailable):
        async for chunk in stream.chunks():
            received += chunk
    stream.close()
    assert bytes(received) == data[:2500]
    assert await read(fake, "library/app", layer) == data  # cut once only
    fake.down = True
    with pytest.raises(UpstreamUnavailable):
        await fake.head_manifest("library/app", "1")
    fake.down, fake.rate_limited, fake.retry_after = False, True, 7
    with pytest.raises(UpstreamRateLimited) as limited:
        await fake.get_manifest("library/app", "1")
    assert limited.value.retry_after == 7
    fake.rate_limited, fake.announce_digests = False, False
    assert (await fake.head_manifest("library/app", "1")).digest is None
    assert fake.counts() == {"get_blob": 2, "head_manifest": 2, "get_manifest": 1}
