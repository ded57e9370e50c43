"""``tags/list`` through the mirror: pagination that keeps containerd's ``?ns=``, one upstream
read for all the pages of a listing, and answers that say when they are incomplete."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import MirrorFactory
from tests.support.faulty import FaultyProxy
from tests.support.images import push_image
from tests.support.mirror import STALE, MirrorProcess
from tests.support.registry import RegistryProcess

TAGS = r"/tags/list$"


@pytest.fixture
def mirror(proxy: FaultyProxy, mirror_factory: MirrorFactory) -> MirrorProcess:
    return mirror_factory(proxy.url)


def push_tags(upstream: RegistryProcess, repo: str, tags: list[str]) -> None:
    image = push_image(upstream.url, repo, tags[0], layers=[1_000], seed=71)
    with httpx.Client(trust_env=False) as up:
        for tag in tags[1:]:
            up.put(
                f"{upstream.url}/v2/{repo}/manifests/{tag}",
                content=image.manifest,
                headers={"Content-Type": image.media_type},
            ).raise_for_status()


def test_pages_keep_the_namespace_and_read_upstream_once(
    upstream: RegistryProcess, proxy: FaultyProxy, client: httpx.Client
) -> None:
    tags = ["a", "b", "c", "d", "e"]
    push_tags(upstream, "library/paged", tags)
    proxy.clear_log()
    seen: list[str] = []
    url: str | None = "/v2/library/paged/tags/list?ns=docker.io&n=2"
    for _ in range(10):
        if url is None:
            break
        page = client.get(url)
        assert page.status_code == 200
        seen += page.json()["tags"]
        link = page.headers.get("Link")
        url = None if link is None else link.split(";")[0].strip("<>")
        if url is not None:
            assert "ns=docker.io" in url  # containerd's namespace goes on to the next page
    assert seen == tags
    assert proxy.count("GET", TAGS) == 1  # the following pages came from that one read
    # A new listing (no ``last``) asks upstream again: it sees a tag pushed meanwhile.
    push_tags(upstream, "library/paged", ["f"])
    assert client.get("/v2/library/paged/tags/list").json()["tags"] == [*tags, "f"]
    assert proxy.count("GET", TAGS) == 2


def test_a_tag_list_cut_at_the_page_limit_says_so(
    proxy: FaultyProxy, client: httpx.Client, mirror: MirrorProcess
) -> None:
    """An upstream with more pages than the mirror reads (100): the answer carries the
    tags read and a ``Warning``, and the log says so; nothing is cut silently."""
    repo = "library/endless"
    for i in range(101):
        proxy.status(
            "GET",
            TAGS,
            200,
            headers={
                "Content-Type": "application/json",
                "Link": f'</v2/{repo}/tags/list?n=1&last=t{i:03d}>; rel="next"',
            },
            body=json.dumps({"name": repo, "tags": [f"t{i:03d}"]}).encode(),
            times=1,
        )
    listing = client.get(f"/v2/{repo}/tags/list")
    assert listing.status_code == 200
    assert listing.json()["tags"] == [f"t{i:03d}" for i in range(100)]
    assert "truncated" in listing.headers["Warning"]
    assert proxy.count("GET", TAGS) == 100
    assert f"tag list of docker.io/{repo} cut at 100 upstream pages" in mirror.log()


def test_tags_listed_from_the_cache_in_an_outage_say_so(
    upstream: RegistryProcess, proxy: FaultyProxy, client: httpx.Client
) -> None:
    push_tags(upstream, "library/down", ["1", "2"])
    assert client.get("/v2/library/down/manifests/1").status_code == 200
    fresh = client.get("/v2/library/down/tags/list")
    assert fresh.json()["tags"] == ["1", "2"]
    assert "Warning" not in fresh.headers
    proxy.stop()
    try:
        stale = client.get("/v2/library/down/tags/list")
    finally:
        proxy.start()
    assert stale.status_code == 200
    assert stale.json() == {"name": "library/down", "tags": ["1"]}  # the tags seen so far
    assert stale.headers["Warning"] == STALE
