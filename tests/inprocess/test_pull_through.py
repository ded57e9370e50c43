"""The pull-through policy, seen from HTTP and counted at the upstream: tags always
revalidated, digests from the cache, one download per blob, content per repository,
stale answers on outages, nothing cached that does not match its digest."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import aiohttp
import pytest

from registry_mirror.media_types import DOCKER_MANIFEST, OCI_MANIFEST
from registry_mirror.reference import Digest
from tests.inprocess.harness import InProcessMirror, error_codes
from tests.support.fakes import FakeUpstream, make_image
from tests.support.waits import wait_until_async

Mirror = Callable[[], AbstractAsyncContextManager[InProcessMirror]]

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"}
TAG = "/v2/library/app/manifests/1"
STALE = '110 - "served from cache: upstream unavailable"'


async def test_a_tag_is_revalidated_on_every_request(
    mirror: Mirror, upstream: FakeUpstream
) -> None:
    first = upstream.put_image("library/app", "1", make_image("first"))
    async with mirror() as m:
        for method in ("GET", "GET", "HEAD", "GET"):
            response = await m.client.request(method, TAG, headers=ACCEPT)
            assert response.status == 200
            assert response.headers["Docker-Content-Digest"] == str(first.digest)
        assert upstream.count("head_manifest", "library/app", "1") == 4
        assert upstream.count("get_manifest") == 1  # the body once, then from the cache
        second = upstream.put_image("library/app", "1", make_image("second"))  # retagged
        moved = await m.client.get(TAG, headers=ACCEPT)
        assert moved.headers["Docker-Content-Digest"] == str(second.digest)
        assert await moved.read() == second.manifest
        assert upstream.count("head_manifest", "library/app", "1") == 5
        assert await m.index.get_tag("docker.io/library/app", "1") == second.digest
        upstream.untag("library/app", "1")
        gone = await m.client.get(TAG, headers=ACCEPT)
        assert gone.status == 404
        assert await error_codes(gone) == ["MANIFEST_UNKNOWN"]
        assert await m.index.get_tag("docker.io/library/app", "1") is None


async def test_cached_digests_do_not_reach_upstream(mirror: Mirror, upstream: FakeUpstream) -> None:
    image = upstream.put_image("library/app", "1")
    async with mirror() as m:
        assert (await m.client.get(f"/v2/library/app/manifests/{image.digest}")).status == 200
        for digest in image.blobs:
            assert (await m.client.get(f"/v2/library/app/blobs/{digest}")).status == 200
        asked = upstream.counts()
        assert asked["get_blob"] == len(image.blobs)
        for _ in range(3):
            manifest = await m.client.get(f"/v2/library/app/manifests/{image.digest}")
            assert await manifest.read() == image.manifest
            for digest, data in image.blobs.items():
                blob = await m.client.get(f"/v2/library/app/blobs/{digest}")
                assert await blob.read() == data
                assert (await m.client.head(f"/v2/library/app/blobs/{digest}")).status == 200
        assert upstream.counts() == asked
        upstream.down = True  # not even asked: an outage changes nothing
        assert (await m.client.get(f"/v2/library/app/manifests/{image.digest}")).status == 200
        assert upstream.counts() == asked


async def test_one_download_for_concurrent_cold_requests(
    mirror: Mirror, upstream: FakeUpstream
) -> None:
    image = upstream.put_image("library/app", "1", make_image("big", layers=[400_000]))
    digest, data = image.layer_digests[0], image.layers[0]
    upstream.hold = asyncio.Event()  # the download stops after its first chunk until set
    upstream.chunk_delay = 0.002
    async with mirror() as m:

        async def pull() -> bytes:
            response = await m.client.get(f"/v2/library/app/blobs/{digest}")
            assert response.status == 200
            return await response.read()

        pulls = asyncio.gather(*(pull() for _ in range(16)))
        await wait_until_async(lambda: len(m.store.readers) == 16)  # all on the download
        assert digest not in m.store.blobs  # ... not one of them a cache hit
        upstream.hold.set()
        bodies = await pulls
        assert all(body == data for body in bodies)
        assert upstream.count("get_blob") == 1
        assert m.store.blobs[digest] == data
        assert upstream.open_streams == 0


async def test_content_is_per_repository(mirror: Mirror, upstream: FakeUpstream) -> None:
    image = upstream.put_image("library/a", "1", make_image("shared"))
    layer = image.layer_digests[0]
    async with mirror() as m:
        assert (await m.client.get(f"/v2/library/a/manifests/{image.digest}")).status == 200
        assert (await m.client.get(f"/v2/library/a/blobs/{layer}")).status == 200
        assert upstream.count("get_blob") == 1
        # Cached through library/a; library/b upstream has no such content.
        blob = await m.client.get(f"/v2/library/b/blobs/{layer}")
        assert blob.status == 404
        assert await error_codes(blob) == ["BLOB_UNKNOWN"]
        manifest = await m.client.get(f"/v2/library/b/manifests/{image.digest}")
        assert manifest.status == 404
        assert await error_codes(manifest) == ["MANIFEST_UNKNOWN"]
        head = await m.client.head(f"/v2/library/b/blobs/{layer}")
        assert head.status == 404
        assert upstream.count("head_blob", "library/b", layer) == 2
        assert upstream.count("head_manifest", "library/b", image.digest) == 1
        upstream.put_image("library/b", None, image)  # now it does: confirmed, not fetched
        blob = await m.client.get(f"/v2/library/b/blobs/{layer}")
        assert blob.status == 200
        assert await blob.read() == image.layers[0]
        manifest = await m.client.get(f"/v2/library/b/manifests/{image.digest}")
        assert manifest.status == 200
        assert await manifest.read() == image.manifest
        assert upstream.count("head_blob", "library/b", layer) == 3
        assert upstream.count("head_manifest", "library/b", image.digest) == 2
        assert upstream.count("get_blob") == 1
        assert upstream.count("get_manifest") == 1
        # Confirmed once, linked from then on: not asked again.
        asked = upstream.counts()
        assert (await m.client.get(f"/v2/library/b/blobs/{layer}")).status == 200
        assert (await m.client.get(f"/v2/library/b/manifests/{image.digest}")).status == 200
        assert upstream.counts() == asked


async def test_a_fill_in_progress_serves_another_repository(
    mirror: Mirror, upstream: FakeUpstream
) -> None:
    image = upstream.put_image("library/a", "1", make_image("shared", layers=[300_000]))
    upstream.put_image("library/b", "1", image)
    digest, data = image.layer_digests[0], image.layers[0]
    upstream.hold = asyncio.Event()  # the download through library/a is still going

    async def pull(repo: str) -> bytes:
        response = await m.client.get(f"/v2/{repo}/blobs/{digest}")
        assert response.status == 200
        return await response.read()

    async with mirror() as m:
        first = asyncio.ensure_future(pull("library/a"))
        await upstream.called("get_blob")
        elsewhere = await m.client.get(f"/v2/library/c/blobs/{digest}")  # not there
        assert elsewhere.status == 404
        assert await error_codes(elsewhere) == ["BLOB_UNKNOWN"]
        second = asyncio.ensure_future(pull("library/b"))
        await wait_until_async(lambda: len(m.store.readers) == 2)  # b follows a's download
        assert upstream.count("head_blob", "library/b", digest) == 1  # once confirmed there
        assert digest not in m.store.blobs  # ... while it is still going
        upstream.hold.set()
        assert list(await asyncio.gather(first, second)) == [data, data]
        assert upstream.count("get_blob") == 1  # followed, once upstream confirmed it there
        assert upstream.count("head_blob", "library/b", digest) == 1
        assert upstream.count("head_blob", "library/c", digest) == 1


async def test_a_client_leaving_does_not_stop_the_download(
    mirror: Mirror, upstream: FakeUpstream
) -> None:
    image = upstream.put_image("library/app", "1", make_image("left", layers=[600_000]))
    digest, data = image.layer_digests[0], image.layers[0]
    upstream.hold = asyncio.Event()  # the download stops after its first chunk until set
    async with mirror() as m:
        response = await m.client.get(f"/v2/library/app/blobs/{digest}")
        assert len(await response.content.read(1000)) == 1000
        response.close()  # gone after the first bytes
        # The server sees it go (its stream of the download closed) while the download is
        # in progress; the download goes on.
        await wait_until_async(lambda: m.store.readers and m.store.readers[0].closed)
        assert digest not in m.store.blobs
        upstream.hold.set()
        await wait_until_async(lambda: digest in m.store.blobs)
        again = await m.client.get(f"/v2/library/app/blobs/{digest}")
        assert await again.read() == data
        assert upstream.count("get_blob") == 1
        assert m.store.blobs[digest] == data
        assert upstream.open_streams == 0


async def test_a_tag_resolved_by_head_is_recorded(mirror: Mirror, upstream: FakeUpstream) -> None:
    """Docker and containerd resolve a tag with HEAD, then fetch the digest: the tag is
    recorded then, and served stale in an outage."""
    image = upstream.put_image("library/app", "1")
    async with mirror() as m:
        head = await m.client.head(TAG, headers=ACCEPT)
        assert head.status == 200
        assert head.headers["Content-Length"] == str(len(image.manifest))
        assert upstream.counts() == {"head_manifest": 1}  # upstream's HEAD answered it
        assert await m.index.get_tag("docker.io/library/app", "1") is None
        by_digest = await m.client.get(f"/v2/library/app/manifests/{image.digest}")
        assert await by_digest.read() == image.manifest
        assert await m.index.get_tag("docker.io/library/app", "1") == image.digest
        upstream.down = True
        stale = await m.client.get(TAG, headers=ACCEPT)
        assert stale.status == 200
        assert stale.headers["Warning"] == STALE


async def test_a_negotiated_tag_is_served_stale(mirror: Mirror, upstream: FakeUpstream) -> None:
    index = upstream.put_index("library/multi", "1")
    amd64 = index.images["linux/amd64"]
    path = "/v2/library/multi/manifests/1"
    async with mirror() as m:
        fresh = await m.client.get(path, headers=ACCEPT)
        assert fresh.headers["Docker-Content-Digest"] == str(amd64.digest)
        upstream.down = True
        stale = await m.client.get(path, headers=ACCEPT)
        assert stale.status == 200
        assert stale.headers["Docker-Content-Digest"] == str(amd64.digest)
        assert stale.headers["Warning"] == STALE
        assert await stale.read() == amd64.manifest


@pytest.mark.parametrize("fault", ["down", "rate_limited"])
async def test_a_cached_tag_is_served_stale(
    mirror: Mirror, upstream: FakeUpstream, fault: str
) -> None:
    image = upstream.put_image("library/app", "1")
    upstream.put_image("library/app", "2", make_image("two"))
    async with mirror() as m:
        fresh = await m.client.get(TAG, headers=ACCEPT)
        assert fresh.status == 200
        assert "Warning" not in fresh.headers
        setattr(upstream, fault, True)
        for method in ("GET", "HEAD"):
            stale = await m.client.request(method, TAG, headers=ACCEPT)
            assert stale.status == 200, method
            assert stale.headers["Docker-Content-Digest"] == str(image.digest)
            assert stale.headers["Warning"] == STALE
            assert await stale.read() == (image.manifest if method == "GET" else b"")
        assert upstream.count("head_manifest", "library/app", "1") == 3  # still asked first
        tags = await m.client.get("/v2/library/app/tags/list")
        assert tags.status == 200
        assert (await tags.json())["tags"] == ["1"]  # what the cache knows
        assert tags.headers["Warning"] == STALE
        uncached = await m.client.get("/v2/library/app/manifests/2", headers=ACCEPT)
        blob = await m.client.get(f"/v2/library/app/blobs/{image.layer_digests[0]}")
        if fault == "down":
            for response in (uncached, blob):
                assert response.status == 503
                assert await error_codes(response) == ["UNAVAILABLE"]
        else:
            for response in (uncached, blob):
                assert response.status == 429
                assert response.headers["Retry-After"] == "30"
                assert await error_codes(response) == ["TOOMANYREQUESTS"]
        setattr(upstream, fault, False)
        back = await m.client.get(TAG, headers=ACCEPT)
        assert back.status == 200
        assert "Warning" not in back.headers


async def test_a_mismatching_blob_is_never_cached(mirror: Mirror, upstream: FakeUpstream) -> None:
    image = upstream.put_image("library/app", "1")
    digest = image.layer_digests[1]
    upstream.mismatch(digest)
    path = f"/v2/library/app/blobs/{digest}"
    upstream.hold = asyncio.Event()  # the clients meet on one download

    async def cut_off() -> None:
        response = await m.client.get(path)
        assert response.status == 200  # the headers are out before the verdict...
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()  # ...the last bytes never are

    async with mirror() as m:
        clients = asyncio.gather(*(cut_off() for _ in range(4)))
        await wait_until_async(lambda: len(m.store.readers) == 4)
        upstream.hold.set()
        await clients
        assert upstream.count("get_blob") == 1
        await cut_off()
        assert upstream.count("get_blob") == 2  # nothing kept: asked again
        assert m.store.blobs == {}
        assert await m.index.known([digest]) == set()
        assert upstream.open_streams == 0
        assert (await m.client.get("/v2/_catalog")).status == 200


async def test_a_mismatching_manifest_is_refused(mirror: Mirror, upstream: FakeUpstream) -> None:
    image = upstream.put_image("library/app", "1")
    lie = Digest.of(b"another manifest")
    upstream.put_manifest("library/app", image.manifest, image.media_type)
    repository = upstream.repositories["library/app"]
    repository.manifests[lie] = repository.manifests[image.digest]  # served under a lie
    async with mirror() as m:
        response = await m.client.get(f"/v2/library/app/manifests/{lie}")
        assert response.status == 502
        assert await error_codes(response) == ["UNKNOWN"]
        assert m.store.blobs == {}
        assert await m.index.get_manifest(lie) is None


async def test_a_cut_download_resumes(mirror: Mirror, upstream: FakeUpstream) -> None:
    image = upstream.put_image("library/app", "1", make_image("cut", layers=[100_000]))
    digest, data = image.layer_digests[0], image.layers[0]
    upstream.cut(digest, after=30_000, times=1)
    async with mirror() as m:
        response = await m.client.get(f"/v2/library/app/blobs/{digest}")
        assert response.status == 200
        assert await response.read() == data
        offsets = [call.offset for call in upstream.calls if call.method == "get_blob"]
        assert offsets == [0, 30_000]  # resumed where it broke, not from the start
        assert m.store.blobs[digest] == data
        assert await m.index.known([digest]) == {digest}


async def test_a_download_that_keeps_breaking_caches_nothing(
    mirror: Mirror, upstream: FakeUpstream
) -> None:
    image = upstream.put_image("library/app", "1", make_image("cut", layers=[100_000]))
    digest = image.layer_digests[0]
    upstream.cut(digest, after=10_000)  # every attempt
    async with mirror() as m:
        response = await m.client.get(f"/v2/library/app/blobs/{digest}")
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
        assert upstream.count("get_blob") == 3  # the attempts, each from where it broke
        assert m.store.blobs == {}
        assert await m.index.known([digest]) == set()
        assert upstream.open_streams == 0


async def test_an_upstream_naming_no_digest(mirror: Mirror, upstream: FakeUpstream) -> None:
    image = upstream.put_image("library/app", "1")
    upstream.announce_digests = False  # a HEAD tells nothing: the tag is fetched and hashed
    async with mirror() as m:
        for _ in range(2):
            response = await m.client.get(TAG, headers=ACCEPT)
            assert response.status == 200
            assert response.headers["Docker-Content-Digest"] == str(image.digest)
            assert await response.read() == image.manifest
        assert upstream.count("head_manifest") == 2
        assert upstream.count("get_manifest") == 2
        assert await m.index.get_tag("docker.io/library/app", "1") == image.digest


async def test_stale_when_only_the_download_fails(mirror: Mirror, upstream: FakeUpstream) -> None:
    """Upstream names a new digest for the tag, then cannot deliver it: the last cached
    manifest of the tag is served, marked stale."""
    old = upstream.put_image("library/app", "1", make_image("old"))
    async with mirror() as m:
        assert (await m.client.get(TAG, headers=ACCEPT)).status == 200
        new = upstream.put_image("library/app", "1", make_image("new"))
        upstream.down_for = {"get_manifest"}
        stale = await m.client.get(TAG, headers=ACCEPT)
        assert stale.status == 200
        assert stale.headers["Docker-Content-Digest"] == str(old.digest)
        assert stale.headers["Warning"] == STALE
        assert upstream.count("head_manifest") == 2
        upstream.down_for = set()
        fresh = await m.client.get(TAG, headers=ACCEPT)
        assert fresh.headers["Docker-Content-Digest"] == str(new.digest)
        assert "Warning" not in fresh.headers


async def test_a_range_of_a_blob_being_filled_is_answered_before_the_fill_ends(
    mirror: Mirror, upstream: FakeUpstream
) -> None:
    """A lazy-pulling client reads a few bytes of a cold blob: its range is answered as
    soon as those bytes are here, while the download goes on; a whole-blob response
    still waits for the digest."""
    image = upstream.put_image("library/app", "1", make_image("lazy", layers=[600_000]))
    digest, data = image.layer_digests[0], image.layers[0]
    upstream.hold = asyncio.Event()  # the download stops after its first chunk until set
    path = f"/v2/library/app/blobs/{digest}"
    async with mirror() as m:
        ranged = await asyncio.wait_for(m.client.get(path, headers={"Range": "bytes=0-999"}), 10)
        assert ranged.status == 206
        assert ranged.headers["Content-Range"] == f"bytes 0-999/{len(data)}"
        assert await asyncio.wait_for(ranged.read(), 10) == data[:1000]
        whole = await m.client.get(path)
        assert whole.status == 200
        early = asyncio.ensure_future(whole.read())
        await asyncio.sleep(0.2)
        assert not early.done()  # the whole blob is not complete before its verdict
        assert digest not in m.store.blobs  # ... and the download is still held
        upstream.hold.set()
        assert await asyncio.wait_for(early, 10) == data
        assert upstream.count("get_blob") == 1
        assert upstream.open_streams == 0


async def test_a_range_far_ahead_of_the_fill_is_asked_of_upstream_by_itself(
    mirror: Mirror, upstream: FakeUpstream
) -> None:
    """A few KiB deep into a cold layer: asked of upstream as a range of its own while
    the download goes on (held here after its first chunk), not after the download."""
    image = upstream.put_image("library/app", "1", make_image("deep", layers=[12_000_000]))
    digest, data = image.layer_digests[0], image.layers[0]
    upstream.hold = asyncio.Event()
    path = f"/v2/library/app/blobs/{digest}"
    async with mirror() as m:
        whole = await m.client.get(path)  # starts the download
        assert whole.status == 200
        at = 10_000_000
        ranged = await asyncio.wait_for(
            m.client.get(path, headers={"Range": f"bytes={at}-{at + 4095}"}), 10
        )
        assert ranged.status == 206
        assert ranged.headers["Content-Range"] == f"bytes {at}-{at + 4095}/{len(data)}"
        assert await asyncio.wait_for(ranged.read(), 10) == data[at : at + 4096]
        assert digest not in m.store.blobs  # the download is still held
        calls = [c for c in upstream.calls if c.method == "get_blob"]
        assert [(c.offset, c.end) for c in calls] == [(0, None), (at, at + 4096)]
        upstream.hold.set()
        assert await asyncio.wait_for(whole.read(), 10) == data
        await wait_until_async(lambda: digest in m.store.blobs)
        assert m.store.blobs[digest] == data
        assert upstream.open_streams == 0


async def test_a_far_range_follows_the_fill_when_upstream_refuses_it(
    mirror: Mirror, upstream: FakeUpstream
) -> None:
    image = upstream.put_image("library/app", "1", make_image("refused", layers=[12_000_000]))
    digest, data = image.layer_digests[0], image.layers[0]
    path = f"/v2/library/app/blobs/{digest}"
    upstream.hold = asyncio.Event()
    async with mirror() as m:
        whole = await m.client.get(path)  # its download is open, and held
        upstream.down_for = {"get_blob"}  # a new download fails
        ranged = await asyncio.wait_for(
            m.client.get(path, headers={"Range": "bytes=10000000-10000099"}), 10
        )
        assert ranged.status == 206
        assert upstream.count("get_blob") == 2  # asked, refused
        body = asyncio.ensure_future(ranged.read())
        await asyncio.sleep(0.1)
        assert not body.done()  # waits for the download to get there
        upstream.hold.set()
        assert await asyncio.wait_for(body, 10) == data[10_000_000:10_000_100]
        assert await whole.read() == data
        assert upstream.open_streams == 0
