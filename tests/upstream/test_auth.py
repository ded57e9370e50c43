"""Upstream authentication against a real registry: Docker Hub's token flow and Basic auth.

The upstream is Debian's docker-registry with ``auth: token`` (trusting a token service
written for the tests, as Docker Hub trusts auth.docker.io) or ``auth: htpasswd``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import MirrorFactory
from tests.support.images import MANIFEST_ACCEPT, PushedImage, push_image
from tests.support.registry import RegistryProcess
from tests.support.token_auth import TokenService

PUBLIC = "library/app"
PRIVATE = "acme/secret"
PASSWORD = "correct-horse-battery"
WRONG = "wr0ng-pa55w0rd"


@pytest.fixture
def images(tmp_path: Path) -> dict[str, PushedImage]:
    """Images pushed while the registry is open; it restarts with auth on the same storage."""
    with RegistryProcess(tmp_path / "upstream") as open_registry:
        return {
            PUBLIC: push_image(open_registry.url, PUBLIC, "1", layers=[50_000, 80_000]),
            PRIVATE: push_image(open_registry.url, PRIVATE, "1", layers=[60_000], seed=3),
        }


@pytest.fixture
def tokens(tmp_path: Path) -> Iterator[TokenService]:
    with TokenService(tmp_path / "tokens", users={"alice": PASSWORD}) as service:
        yield service


@pytest.fixture
def token_upstream(
    tmp_path: Path, images: dict[str, PushedImage], tokens: TokenService
) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path / "upstream", extra_config=tokens.registry_config()) as up:
        yield up


def pull(client: httpx.Client, image: PushedImage) -> None:
    """A client's pull: manifest by tag, then every blob; checks every byte."""
    manifest = client.get(
        f"/v2/{image.repo}/manifests/{image.tag}", headers={"Accept": MANIFEST_ACCEPT}
    )
    assert manifest.status_code == 200, manifest.text
    assert manifest.content == image.manifest
    for digest, data in image.blobs.items():
        blob = client.get(f"/v2/{image.repo}/blobs/{digest}")
        assert blob.status_code == 200, blob.text
        assert blob.content == data


def mirror_client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, trust_env=False, timeout=30)


def test_anonymous_token_flow_fetches_one_token_per_scope(
    token_upstream: RegistryProcess,
    tokens: TokenService,
    images: dict[str, PushedImage],
    mirror_factory: MirrorFactory,
) -> None:
    mirror = mirror_factory(token_upstream.url)
    with mirror_client(mirror.url) as client:
        pull(client, images[PUBLIC])
        pull(client, images[PUBLIC])  # the tag check again, with the cached token
    assert tokens.count(f"repository:{PUBLIC}:pull") == 1
    assert all(request.user is None for request in tokens.requests)
    # Every upstream request but the first carried the token (one 401 to learn the realm).
    assert token_upstream.count(None, r"^/v2/library/app/", status=401) == 1


def test_credentials_reach_private_repositories(
    token_upstream: RegistryProcess,
    tokens: TokenService,
    images: dict[str, PushedImage],
    mirror_factory: MirrorFactory,
) -> None:
    anonymous = mirror_factory(token_upstream.url, name="anonymous")
    with mirror_client(anonymous.url) as client:
        refused = client.get(f"/v2/{PRIVATE}/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
        assert refused.status_code == 403
        assert refused.json()["errors"][0]["code"] == "DENIED"

    # registry:2's own environment variables for the credentials.
    env = {"REGISTRY_PROXY_USERNAME": "alice", "REGISTRY_PROXY_PASSWORD": PASSWORD}
    mirror = mirror_factory(token_upstream.url, name="alice", env=env)
    with mirror_client(mirror.url) as client:
        pull(client, images[PRIVATE])
    assert [r.user for r in tokens.requests if r.scope == f"repository:{PRIVATE}:pull"][-1] == (
        "alice"
    )
    for token in tokens.issued:
        assert token not in mirror.log()
    assert PASSWORD not in mirror.log()


def test_wrong_credentials_are_a_clear_unauthorized(
    token_upstream: RegistryProcess, images: dict[str, PushedImage], mirror_factory: MirrorFactory
) -> None:
    mirror = mirror_factory(
        token_upstream.url, args=["--proxy-username", "alice", "--proxy-password", WRONG]
    )
    with mirror_client(mirror.url) as client:
        response = client.get(f"/v2/{PRIVATE}/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
    assert response.status_code == 403
    error = response.json()["errors"][0]
    assert error["code"] == "DENIED"
    assert "credentials" in error["message"]
    assert WRONG not in response.text
    assert WRONG not in mirror.log()


def test_expired_token_is_renewed(
    token_upstream: RegistryProcess,
    tokens: TokenService,
    images: dict[str, PushedImage],
    mirror_factory: MirrorFactory,
) -> None:
    tokens.expires_in = 2
    mirror = mirror_factory(token_upstream.url)
    scope = f"repository:{PUBLIC}:pull"
    with mirror_client(mirror.url) as client:
        pull(client, images[PUBLIC])
        assert tokens.count(scope) == 1
        time.sleep(2.2)
        pull(client, images[PUBLIC])
    assert tokens.count(scope) == 2


def test_rejected_token_is_renewed_once_not_in_a_loop(
    token_upstream: RegistryProcess,
    tokens: TokenService,
    images: dict[str, PushedImage],
    mirror_factory: MirrorFactory,
) -> None:
    mirror = mirror_factory(token_upstream.url)
    scope = f"repository:{PUBLIC}:pull"
    tokens.bad_tokens = 1  # the registry refuses the first token: renewed, then accepted
    with mirror_client(mirror.url) as client:
        pull(client, images[PUBLIC])
        assert tokens.count(scope) == 2
        tokens.bad_tokens = 1000  # from now on every token is refused
        time.sleep(0.1)
        before = tokens.count(scope)
        mirror.restart()  # forget the good token
        response = client.get(f"/v2/{PUBLIC}/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
    # Served from the cache? No: an auth failure is not an outage; the client is told.
    assert response.status_code == 403
    assert response.json()["errors"][0]["code"] == "DENIED"
    assert tokens.count(scope) - before == 2


@pytest.fixture
def basic_upstream(tmp_path: Path, images: dict[str, PushedImage]) -> Iterator[RegistryProcess]:
    with RegistryProcess(tmp_path / "upstream", htpasswd=("bob", PASSWORD)) as up:
        yield up


def test_basic_auth_upstream(
    basic_upstream: RegistryProcess, images: dict[str, PushedImage], mirror_factory: MirrorFactory
) -> None:
    good = mirror_factory(
        basic_upstream.url,
        name="good",
        args=["--proxy-username", "bob", "--proxy-password", PASSWORD],
    )
    with mirror_client(good.url) as client:
        pull(client, images[PRIVATE])
    assert PASSWORD not in good.log()
    for name, args in {
        "none": [],
        "bad": ["--proxy-username", "bob", "--proxy-password", "nope"],
    }.items():
        mirror = mirror_factory(basic_upstream.url, name=name, args=args)
        with mirror_client(mirror.url) as client:
            response = client.get(f"/v2/{PRIVATE}/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
            assert response.status_code == 403, name
            assert response.json()["errors"][0]["code"] == "DENIED"
            blob = client.get(f"/v2/{PRIVATE}/blobs/{images[PRIVATE].layer_digests[0]}")
            assert blob.status_code == 403, name
