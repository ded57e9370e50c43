"""Access control through HTTP: Basic auth from an htpasswd file, the anonymous read
policy, and the allow list of client networks (with trusted proxies)."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry_mirror.media_types import DOCKER_MANIFEST, OCI_MANIFEST
from tests.inprocess.harness import InProcessMirror, StartMirror, basic, error_codes, write_htpasswd
from tests.support.fakes import FakeImage, FakeUpstream

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"}
CHALLENGE = 'Basic realm="registry-mirror"'
ALICE = basic("alice", "wonderland")


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    return write_htpasswd(tmp_path / "htpasswd", {"alice": "wonderland", "bob": "builder"})


def paths(image: FakeImage, repo: str = "library/app") -> list[str]:
    """Every kind of read: ping, tag, digest, blob, tag list, under ``repo``."""
    return [
        "/v2/",
        f"/v2/{repo}/manifests/1",
        f"/v2/{repo}/manifests/{image.digest}",
        f"/v2/{repo}/blobs/{image.layer_digests[0]}",
        f"/v2/{repo}/tags/list",
    ]


async def assert_challenged(m: InProcessMirror, path: str, headers: dict[str, str]) -> None:
    for method in ("GET", "HEAD"):
        response = await m.client.request(method, path, headers={**ACCEPT, **headers})
        assert response.status == 401, (method, path)
        assert response.headers["WWW-Authenticate"] == CHALLENGE
        if method == "GET":
            assert await error_codes(response) == ["UNAUTHORIZED"]


async def test_basic_auth(
    start_mirror: StartMirror, upstream: FakeUpstream, htpasswd: Path
) -> None:
    image = upstream.put_image("library/app", "1")
    upstream.put_image("library/other", "1", image)
    flags = {"auth.htpasswd.path": str(htpasswd), "limits.failed_logins": 0}  # no 429 here
    async with start_mirror(upstream, flags=flags) as m:
        for path in paths(image):
            await assert_challenged(m, path, {})
            await assert_challenged(m, path, basic("alice", "wrong"))
            await assert_challenged(m, path, basic("mallory", "wonderland"))
        assert upstream.count() == 0  # refused before anything is asked
        for path in paths(image):  # cold
            response = await m.client.get(path, headers={**ACCEPT, **ALICE})
            assert response.status == 200, path
        assert image.layer_digests[0] in m.store.blobs
        for path in paths(image):  # cached now: still refused without credentials
            await assert_challenged(m, path, {})
        # Cached through library/app, asked under another repository's name.
        for path in paths(image, "library/other")[1:]:
            await assert_challenged(m, path, {})
            response = await m.client.get(path, headers={**ACCEPT, **basic("bob", "builder")})
            assert response.status == 200, path
        manifest = await m.client.get(f"/v2/library/other/manifests/{image.digest}", headers=ALICE)
        assert await manifest.read() == image.manifest
        assert upstream.count("get_blob") == 1
        catalog = await m.client.get("/v2/_catalog")
        assert await catalog.json() == {"repositories": []}  # anonymous: reads nothing
        catalog = await m.client.get("/v2/_catalog", headers=ALICE)
        assert (await catalog.json())["repositories"] == ["library/app", "library/other"]


async def test_anonymous_read_policy(
    start_mirror: StartMirror, upstream: FakeUpstream, htpasswd: Path
) -> None:
    public = upstream.put_image("library/app", "1")
    private = upstream.put_image("acme/secret", "1")
    flags = {"auth.htpasswd.path": str(htpasswd), "auth.anonymous": "docker.io/library/*"}
    async with start_mirror(upstream, flags=flags) as m:
        await assert_challenged(m, "/v2/", {})  # the ping asks clients to log in
        for path in paths(public)[1:]:
            response = await m.client.get(path, headers=ACCEPT)
            assert response.status == 200, path
        for path in paths(private, "acme/secret")[1:]:
            await assert_challenged(m, path, {})
            assert (await m.client.get(path, headers={**ACCEPT, **ALICE})).status == 200
        catalog = await m.client.get("/v2/_catalog")
        assert await catalog.json() == {"repositories": ["library/app"]}
        # The public layer, asked under the private name: refused without credentials.
        await assert_challenged(m, f"/v2/acme/secret/blobs/{public.layer_digests[0]}", {})


@pytest.mark.parametrize(
    ("allow", "trusted", "forwarded", "status"),
    [
        ("127.0.0.0/8", None, None, 200),
        ("10.0.0.0/8,192.0.2.0/24", None, None, 403),
        ("10.0.0.0/8", None, "10.1.2.3", 403),  # X-Forwarded-For of an untrusted peer
        ("10.0.0.0/8", "127.0.0.1/32", "10.1.2.3", 200),
        ("10.0.0.0/8", "127.0.0.1/32", "198.51.100.7", 403),
        ("10.0.0.0/8", "127.0.0.1/32", "not-an-address", 403),
        ("10.0.0.0/8", "127.0.0.1/32", "10.1.2.3, 198.51.100.7", 403),  # the rightmost hop
        ("10.0.0.0/8", "127.0.0.1/32,198.51.100.0/24", "10.1.2.3, 198.51.100.7", 200),
    ],
)
async def test_allowed_networks(
    start_mirror: StartMirror,
    upstream: FakeUpstream,
    *,
    allow: str,
    trusted: str | None,
    forwarded: str | None,
    status: int,
) -> None:
    image = upstream.put_image("library/app", "1")
    flags = {"access.allow": allow} | ({"access.trusted_proxies": trusted} if trusted else {})
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    async with start_mirror(upstream, flags=flags) as m:
        for path in [*paths(image), "/v2/_catalog"]:
            response = await m.client.get(path, headers={**ACCEPT, **headers})
            assert response.status == status, path
            if status == 403:
                assert await error_codes(response) == ["DENIED"]
        if status == 403:
            assert upstream.count() == 0
            assert m.store.blobs == {}
