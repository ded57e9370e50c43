"""The root application around the registry API: its admission (allow list, request
rate) holds for every path, not only under ``/v2``; any other path is an OCI 404; a
store that redirects (object storage) sends clients to its URL."""

from __future__ import annotations

import pytest

from registry_mirror.reference import Digest
from registry_mirror.storage import Delivery, Redirect
from tests.inprocess.harness import StartMirror, error_codes
from tests.support.fakes import FakeUpstream


async def test_the_allow_list_holds_beside_the_api(
    start_mirror: StartMirror, upstream: FakeUpstream
) -> None:
    async with start_mirror(upstream, flags={"access.allow": "10.0.0.0/8"}) as m:
        for path in ("/", "/elsewhere", "/v2/"):
            refused = await m.client.get(path)  # the test client comes from 127.0.0.1
            assert refused.status == 403, path
            assert await error_codes(refused) == ["DENIED"], path
    async with start_mirror(upstream, flags={"access.allow": "127.0.0.0/8"}) as m:
        other = await m.client.get("/elsewhere")
        assert other.status == 404
        assert await error_codes(other) == ["NOT_FOUND"]
        assert other.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        assert (await m.client.get("/v2/")).status == 200


async def test_the_request_rate_holds_beside_the_api(
    start_mirror: StartMirror, upstream: FakeUpstream
) -> None:
    flags = {"limits.requests_per_second": 1, "limits.burst": 2}
    async with start_mirror(upstream, flags=flags) as m:
        statuses = [(await m.client.get("/elsewhere")).status for _ in range(4)]
        assert statuses[:2] == [404, 404]
        assert 429 in statuses[2:]
        limited = await m.client.get("/v2/")  # the same client, the same budget
        assert limited.status == 429
        assert await error_codes(limited) == ["TOOMANYREQUESTS"]


async def test_a_redirecting_store_sends_the_client_to_its_url(
    start_mirror: StartMirror, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"layer bytes" * 1000
    digest = upstream.put_blob("library/app", data)
    async with start_mirror(upstream) as m:
        path = f"/v2/library/app/blobs/{digest}"
        assert await (await m.client.get(path)).read() == data  # cached now

        async def redirect(wanted: Digest) -> Delivery:
            return Redirect(f"https://objects.example/{wanted.hex}?signature=x")

        monkeypatch.setattr(m.store, "delivery", redirect)
        moved = await m.client.get(path, allow_redirects=False, headers={"Range": "bytes=0-9"})
        assert moved.status == 307
        assert moved.headers["Location"] == f"https://objects.example/{digest.hex}?signature=x"
        assert moved.headers["Docker-Content-Digest"] == str(digest)
        # The URL may expire: the redirect is not to be kept for the blob's year.
        assert "max-age=31536000" not in moved.headers.get("Cache-Control", "")
        assert upstream.count("get_blob") == 1  # served by the store, not fetched again
