"""The access matrix: route x credential x reference, over plain HTTP and the mirror's TLS.

With htpasswd on and ``auth.anonymous: docker.io/library/*``, a logged-in user has pulled
``acme/private``; then every route (manifest by tag, manifest by digest, blob GET, blob
HEAD, tags/list, _catalog) is asked by an anonymous client, the allowed user and a wrong
password, for the repository's own tag and digest and for the digest of the private
repository's content named under the public repository. Each cell has its exact status,
and private bytes never leave where they are not allowed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import MirrorFactory
from tests.support.images import MANIFEST_ACCEPT, PushedImage, push_image
from tests.support.mirror import MirrorProcess
from tests.support.oci import error_code
from tests.support.registry import RegistryProcess, make_htpasswd_line
from tests.support.tls import tls_args

PASSWORD = "Matrix-pa55word"
CREDENTIALS: dict[str, tuple[str, str] | None] = {
    "anonymous": None,
    "allowed": ("carol", PASSWORD),
    "wrong-password": ("carol", "not-the-password"),
}
PUBLIC, PRIVATE = "library/public", "acme/private"


@dataclass(frozen=True)
class Setup:
    mirror: MirrorProcess
    public: PushedImage
    private: PushedImage


@pytest.fixture(params=["http", "tls"])
def setup(
    request: pytest.FixtureRequest,
    upstream: RegistryProcess,
    mirror_factory: MirrorFactory,
    tmp_path: Path,
) -> Iterator[Setup]:
    public = push_image(upstream.url, PUBLIC, "1", layers=[20_000], seed=91)
    private = push_image(upstream.url, PRIVATE, "1", layers=[30_000, 4_000], seed=92)
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(make_htpasswd_line("carol", PASSWORD) + "\n")
    # The matrix sends many wrong passwords on purpose: the failed-login limit (tested in
    # test_auth.py) would answer 429 to them, so it is off here.
    args = ["--auth-htpasswd-path", str(htpasswd), "--auth-anonymous", "docker.io/library/*"]
    args += ["--limits-failed-logins", "0"]
    if request.param == "tls":
        args += tls_args(tmp_path / "tls")
    mirror = mirror_factory(upstream.url, args=args)
    # Both images cached: the private one pulled by the allowed user, the public anonymously.
    for image, auth in ((private, CREDENTIALS["allowed"]), (public, None)):
        with client_for(mirror, auth) as client:
            r = client.get(f"/v2/{image.repo}/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
            assert r.status_code == 200
            for digest in image.blobs:
                assert client.get(f"/v2/{image.repo}/blobs/{digest}").status_code == 200
    yield Setup(mirror, public, private)


def client_for(mirror: MirrorProcess, auth: tuple[str, str] | None) -> httpx.Client:
    return httpx.Client(base_url=mirror.url, auth=auth, verify=False, trust_env=False, timeout=30)


def cells(s: Setup) -> list[tuple[str, str, str, str]]:
    """(description, method, path, who may read it: "anyone", "allowed" or "nobody")."""
    pub, priv = s.public, s.private
    rows: list[tuple[str, str, str, str]] = []
    for repo, image, reader in ((PUBLIC, pub, "anyone"), (PRIVATE, priv, "allowed")):
        layer = image.layer_digests[0]
        rows += [
            (f"{repo} manifest by own tag", "GET", f"/v2/{repo}/manifests/1", reader),
            (
                f"{repo} manifest by own digest",
                "GET",
                f"/v2/{repo}/manifests/{image.digest}",
                reader,
            ),
            (f"{repo} blob GET own", "GET", f"/v2/{repo}/blobs/{layer}", reader),
            (f"{repo} blob HEAD own", "HEAD", f"/v2/{repo}/blobs/{layer}", reader),
            (f"{repo} tags/list", "GET", f"/v2/{repo}/tags/list", reader),
        ]
    # The private repository's content, named under the public repository.
    for digest in [priv.digest, *priv.blobs]:
        kind = "manifests" if digest == priv.digest else "blobs"
        for method in ("GET", "HEAD"):
            rows.append(
                (
                    f"{PUBLIC} {kind} {method} of private {digest[:15]}",
                    method,
                    f"/v2/{PUBLIC}/{kind}/{digest}",
                    "nobody",
                )
            )
    return rows


def expected_status(reader: str, credential: str) -> int:
    if credential == "wrong-password":
        return 401  # wrong credentials are refused everywhere, before anything else
    if reader == "anyone" or (reader == "allowed" and credential == "allowed"):
        return 200
    if reader == "allowed":
        return 401  # anonymous: log in first
    return 404  # nobody reads another repository's content under this name


@pytest.mark.parametrize("credential", list(CREDENTIALS))
def test_access_matrix(setup: Setup, credential: str, upstream: RegistryProcess) -> None:
    secret = [setup.private.manifest, *setup.private.blobs.values()]
    wrong: list[str] = []
    with client_for(setup.mirror, CREDENTIALS[credential]) as client:
        for what, method, path, reader in cells(setup):
            r = client.request(method, path, headers={"Accept": MANIFEST_ACCEPT})
            want = expected_status(reader, credential)
            if r.status_code != want:
                wrong.append(f"{what}: {r.status_code}, expected {want}")
            if want != 200 and any(data in r.content for data in secret):
                wrong.append(f"{what}: private bytes in the answer")
            if want == 401 and "WWW-Authenticate" not in r.headers:
                wrong.append(f"{what}: 401 without a challenge")
            if want == 404 and method == "GET":
                code = error_code(r)
                if code not in ("MANIFEST_UNKNOWN", "BLOB_UNKNOWN"):
                    wrong.append(f"{what}: error code {code}")
        catalog = client.get("/v2/_catalog")
    expected_catalog = {
        "anonymous": (200, [PUBLIC]),
        "allowed": (200, [PRIVATE, PUBLIC]),
        "wrong-password": (401, None),
    }[credential]
    if catalog.status_code != expected_catalog[0]:
        wrong.append(f"_catalog: {catalog.status_code}, expected {expected_catalog[0]}")
    elif expected_catalog[1] is not None and catalog.json() != {
        "repositories": expected_catalog[1]
    }:
        wrong.append(f"_catalog lists {catalog.json()}")
    assert wrong == [], "\n".join(wrong)
    assert PASSWORD not in setup.mirror.log()
    # Nothing of the private image was ever downloaded again, for anyone.
    for digest in setup.private.blobs:
        assert upstream.count("GET", rf"/blobs/{digest}$") == 1
