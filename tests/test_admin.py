"""The admin endpoints (``/admin/...``) on the real mirror process in front of a real
``docker-registry`` (through the fault-injecting proxy, which plays the upstream down):
who may use them, inspect, refresh and forget over plain HTTP and the mirror's TLS, with
one upstream and several, and hostile input against the resource oracle."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MirrorFactory
from tests.support.faulty import FaultyProxy
from tests.support.images import MANIFEST_ACCEPT, PushedImage, push_image, push_index
from tests.support.mirror import STALE, MirrorProcess, assert_log_quiet
from tests.support.oci import assert_oci_error
from tests.support.prometheus import scrape
from tests.support.registry import RegistryProcess, make_htpasswd_line
from tests.support.resources import assert_returns_to_baseline, resources
from tests.support.store import blob_file
from tests.support.tls import tls_args
from tests.support.waits import wait_until

ADMIN = ("carol", "admin-pass-1")
USER = ("dave", "user-pass-2")
FAILED_LOGINS = 4


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    path.write_text("".join(make_htpasswd_line(*user) + "\n" for user in (ADMIN, USER)))
    return path


def admin_args(htpasswd: Path) -> list[str]:
    return [
        "--auth-htpasswd-path",
        str(htpasswd),
        "--auth-admins",
        ADMIN[0],
        "--limits-failed-logins",
        str(FAILED_LOGINS),
    ]


@pytest.fixture(params=["http", "tls"])
def admin_mirror(
    request: pytest.FixtureRequest,
    proxy: FaultyProxy,
    htpasswd: Path,
    mirror_factory: MirrorFactory,
    tmp_path: Path,
) -> MirrorProcess:
    """The mirror with admins, in front of the proxy to the upstream; HTTP and TLS."""
    args = admin_args(htpasswd)
    if request.param == "tls":
        args += tls_args(tmp_path / "tls")
    return mirror_factory(proxy.url, args=args)


@contextlib.contextmanager
def session(mirror: MirrorProcess, auth: tuple[str, str] | None = ADMIN) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=mirror.url, auth=auth, trust_env=False, verify=False, timeout=60
    ) as client:
        yield client


def error_of(response: httpx.Response, status: int, code: str) -> str:
    """The admin error body (never an OCI one, never a traceback): its message."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/json")
    document = response.json()
    assert set(document) == {"error"}, document
    assert set(document["error"]) == {"code", "message"}, document
    assert document["error"]["code"] == code, document
    assert "Traceback" not in response.text
    return str(document["error"]["message"])


def inspect(client: httpx.Client, image: str) -> dict[str, Any]:
    response = client.get("/admin/images", params={"image": image})
    assert response.status_code == 200, response.text
    return dict(response.json())


def complete(client: httpx.Client, image: str) -> dict[str, Any]:
    """The report once every blob is indexed: a client has its bytes once they are
    verified, and the blob's row is written right after."""
    return wait_until(
        lambda: (report := inspect(client, image))["complete"] and report,
        timeout=15,
        message=lambda: json.dumps(inspect(client, image)),
    )


def refresh(client: httpx.Client, image: str) -> httpx.Response:
    return client.post("/admin/images/refresh", json={"image": image})


def forget(client: httpx.Client, image: str, **fields: object) -> dict[str, Any]:
    response = client.post("/admin/images/forget", json={"image": image, **fields})
    assert response.status_code == 200, response.text
    return dict(response.json())


def pull(client: httpx.Client, image: PushedImage, name: str | None = None) -> httpx.Response:
    """Manifest by tag and every blob, checked; the manifest's response."""
    repo = name or image.repo
    response = client.get(f"/v2/{repo}/manifests/{image.tag}", headers={"Accept": MANIFEST_ACCEPT})
    assert response.status_code == 200, response.text
    assert response.headers["Docker-Content-Digest"] == image.digest
    for digest, data in image.blobs.items():
        blob = client.get(f"/v2/{repo}/blobs/{digest}")
        assert blob.status_code == 200, f"{repo}@{digest}: {blob.status_code}"
        assert blob.content == data
    return response


def pull_head_first(client: httpx.Client, image: PushedImage) -> None:
    """As Docker and containerd pull: HEAD the tag, GET the digest it names, the blobs."""
    base = f"/v2/{image.repo}"
    head = client.head(f"{base}/manifests/{image.tag}", headers={"Accept": MANIFEST_ACCEPT})
    assert head.status_code == 200, head.status_code
    assert head.headers["Docker-Content-Digest"] == image.digest
    manifest = client.get(f"{base}/manifests/{image.digest}", headers={"Accept": MANIFEST_ACCEPT})
    assert manifest.status_code == 200, manifest.text
    assert manifest.content == image.manifest
    for digest, data in image.blobs.items():
        assert client.get(f"{base}/blobs/{digest}").content == data, digest


def test_only_admins_may_use_the_endpoints(
    admin_mirror: MirrorProcess, upstream: RegistryProcess
) -> None:
    push_image(upstream.url, "library/app", "1", layers=[3000], seed=1)
    with session(admin_mirror, None) as anonymous:
        refused = anonymous.get("/admin/images", params={"image": "app:1"})
        error_of(refused, 401, "UNAUTHORIZED")
        assert refused.headers["WWW-Authenticate"] == 'Basic realm="registry-mirror"'
        error_of(
            anonymous.post("/admin/images/forget", json={"image": "app:1"}), 401, "UNAUTHORIZED"
        )
        error_of(anonymous.get("/admin/nothing-here"), 401, "UNAUTHORIZED")
    with session(admin_mirror, USER) as user:
        assert user.get("/v2/").status_code == 200  # a user of the registry…
        message = error_of(user.get("/admin/images", params={"image": "app:1"}), 403, "DENIED")
        assert "not an admin" in message  # …but no admin
        error_of(user.post("/admin/images/refresh", json={"image": "app:1"}), 403, "DENIED")
    with session(admin_mirror) as admin:
        assert inspect(admin, "app:1")["cached"] is False
        # Mutations only by POST (or DELETE), a POST only with a JSON body: no CSRF by a
        # link or a form.
        not_allowed = admin.get("/admin/images/forget", params={"image": "app:1"})
        error_of(not_allowed, 405, "METHOD_NOT_ALLOWED")
        assert not_allowed.headers["Allow"] == "POST"
        form = admin.post("/admin/images/forget", data={"image": "app:1"})
        error_of(form, 415, "UNSUPPORTED_MEDIA_TYPE")
        error_of(admin.put("/admin/images", params={"image": "app:1"}), 405, "METHOD_NOT_ALLOWED")
        error_of(admin.get("/admin/nothing-here"), 404, "NOT_FOUND")
    # Wrong passwords count against the registry's failed-login limit.
    with session(admin_mirror, (ADMIN[0], "wrong")) as wrong:
        for _ in range(FAILED_LOGINS):
            error_of(wrong.get("/admin/images", params={"image": "app:1"}), 401, "UNAUTHORIZED")
        error_of(wrong.get("/admin/images", params={"image": "app:1"}), 429, "TOOMANYREQUESTS")
        assert_oci_error(wrong.get("/v2/"), 429, "TOOMANYREQUESTS")
    log = admin_mirror.log()
    assert "admin inspect app:1 by carol from 127.0.0.1: not cached" in log
    assert "refused: dave is not an admin" in log
    assert ADMIN[1] not in log and USER[1] not in log
    assert_log_quiet(log)


def test_no_admins_no_endpoints(upstream: RegistryProcess, mirror: MirrorProcess) -> None:
    """An open mirror has no admin endpoints at all: nobody can evict."""
    push_image(upstream.url, "library/app", "1", layers=[3000], seed=1)
    with session(mirror, None) as client:
        pull(client, push_image(upstream.url, "library/app", "1", layers=[3000], seed=1))
        assert_oci_error(client.get("/admin/images", params={"image": "app:1"}), 404, "NOT_FOUND")
        refused = client.post("/admin/images/forget", json={"image": "app:1"})
        assert_oci_error(refused, 404, "NOT_FOUND")
        assert client.get("/v2/library/app/manifests/1").status_code == 200


def test_inspect_refresh_and_forget(
    admin_mirror: MirrorProcess, upstream: RegistryProcess, proxy: FaultyProxy
) -> None:
    first = push_image(upstream.url, "library/app", "1", layers=[40_000, 9_000], seed=2)
    with session(admin_mirror) as admin:
        pull(admin, first)
        report = complete(admin, "app:1")
        assert report["key"] == "docker.io/library/app"
        assert report["repository"] == "library/app"
        assert report["digest"] == first.digest
        assert report["cached"] and report["linked"] and report["complete"]
        assert report["blobs"] == report["blobs_cached"] == 3  # config and two layers
        assert (
            report["cached_bytes"]
            == report["total_bytes"]
            == sum(len(b) for b in first.blobs.values())
        )
        [manifest] = report["manifests"]
        assert manifest["platform"] is None
        assert {b["digest"]: b["size"] for b in manifest["blobs"]} == {
            d: len(b) for d, b in first.blobs.items()
        }
        assert report["last_use"] is not None and report["hits"] >= 1
        # The same image by every name a client uses for it, and by digest.
        assert inspect(admin, "docker.io/library/app:1")["digest"] == first.digest
        assert inspect(admin, f"library/app@{first.digest}")["complete"]
        assert inspect(admin, "app:2")["cached"] is False

        # Forget: the image goes with what only it uses; the next pull asks upstream.
        gone = forget(admin, "app:1")
        assert gone["tags"] == ["library/app:1"]
        assert (gone["images"], gone["files"], gone["in_use"]) == (1, 4, 0)
        assert gone["freed"] >= len(first.manifest) + sum(len(b) for b in first.blobs.values())
        for digest in (first.digest, *first.blobs):
            assert not blob_file(admin_mirror.root, digest).exists()
        assert inspect(admin, "app:1")["cached"] is False
        # The storage figures no longer count it: nothing else is cached.
        figures = scrape(f"{admin_mirror.url}/metrics", verify=False)
        assert figures.value("registry_mirror_storage_blobs") == 0
        assert figures.value("registry_mirror_storage_used_bytes") == 0
        error_of(admin.post("/admin/images/forget", json={"image": "app:1"}), 404, "NOT_CACHED")
        proxy.clear_log()
        pull(admin, first)
        assert proxy.count("GET", rf"/manifests/{first.digest}$") == 1
        for digest in first.blobs:
            assert proxy.count("GET", rf"/blobs/{digest}$") == 1
        complete(admin, "app:1")

        # Upstream moved the tag: refresh takes the new manifest now.
        second = push_image(upstream.url, "library/app", "1", layers=[40_000, 7_000], seed=3)
        refreshed = refresh(admin, "app:1")
        assert refreshed.status_code == 200, refreshed.text
        result = refreshed.json()
        assert (result["old"], result["new"], result["changed"]) == (
            first.digest,
            second.digest,
            True,
        )
        assert result["fetched"] == [second.digest]
        assert inspect(admin, "app:1")["digest"] == second.digest
        pull_head_first(admin, second)  # a client that asks HEAD first sees it too
        assert proxy.count("GET", rf"/manifests/{second.digest}$") == 1  # refresh's fetch
        after = refresh(admin, "app:1").json()
        assert (after["old"], after["new"], after["changed"]) == (
            second.digest,
            second.digest,
            False,
        )

        # Upstream down: a clear error, and the cache as it was.
        proxy.status(None, r"^/v2/", 503)
        down = refresh(admin, "app:1")
        assert "nothing changed" in error_of(down, 503, "UPSTREAM_UNAVAILABLE")
        assert inspect(admin, "app:1")["digest"] == second.digest
        # The next pull gets what refresh stored (from the cache: upstream is down).
        stale = admin.get("/v2/library/app/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
        assert stale.status_code == 200
        assert stale.headers["Docker-Content-Digest"] == second.digest
        assert stale.headers["Warning"] == STALE
    log = admin_mirror.log()
    assert (
        f"admin refresh docker.io/library/app:1 by carol from 127.0.0.1: {first.digest}"
        f" → {second.digest} (1 manifests fetched)"
    ) in log
    assert "admin refresh app:1 by carol from 127.0.0.1 failed: " in log
    assert "admin forget docker.io/library/app:1 by carol from 127.0.0.1: 1 tags, 1 images" in log
    assert_log_quiet(log)


def test_forget_keeps_what_others_use(
    upstream: RegistryProcess, proxy: FaultyProxy, htpasswd: Path, mirror_factory: MirrorFactory
) -> None:
    mirror = mirror_factory(proxy.url, args=admin_args(htpasswd))
    app = push_image(upstream.url, "library/app", "1", layers=[30_000, 6_000], seed=4)
    push_image(upstream.url, "library/app", "2", layers=[30_000, 6_000], seed=4)
    same = push_image(upstream.url, "team/base", "1", layers=[30_000, 6_000], seed=4)
    assert same.digest == app.digest
    with session(mirror) as admin:
        pull(admin, app)
        pull(admin, same)
        assert admin.get("/v2/library/app/manifests/2").status_code == 200
        # Another tag of the repository names the image: only the tag goes.
        kept = forget(admin, "app:1")
        assert kept["still_tagged"] == ["library/app:2"] and kept["files"] == 0
        assert forget(admin, "app:2", tag_only=True)["tags"] == ["library/app:2"]
        assert inspect(admin, "app:2")["cached"] is False
        # By digest: the repository lets go of it; team/base still holds every file.
        shared = forget(admin, f"library/app@{app.digest}")
        assert (shared["images"], shared["files"], shared["freed"]) == (0, 0, 0)
        assert inspect(admin, f"library/app@{app.digest}")["linked"] is False
        proxy.status(None, r"^/v2/", 503)
        stale = pull(admin, same)  # served from the cache with upstream down
        assert stale.headers["Warning"] == STALE
        error_of(refresh(admin, f"team/base@{same.digest}"), 400, "NEEDS_TAG")


def test_several_upstreams(
    tmp_path: Path, htpasswd: Path, upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    with RegistryProcess(tmp_path / "ghcr") as ghcr:
        config = tmp_path / "mirror.yml"
        config.write_text(
            f"upstreams:\n  - name: ghcr.io\n    url: {ghcr.url}\n    aliases: [gh.mirror]\n"
        )
        mirror = mirror_factory(upstream.url, args=["--config", str(config), *admin_args(htpasswd)])
        hub = push_image(upstream.url, "owner/b", "1", layers=[5000], seed=5)
        image = push_index(ghcr.url, "owner/b", "1", platforms=["linux/amd64", "linux/arm64"])
        with session(mirror) as admin:
            pull(admin, hub)
            index = admin.get(
                "/v2/ghcr.io/owner/b/manifests/1", headers={"Accept": MANIFEST_ACCEPT}
            )
            assert index.headers["Docker-Content-Digest"] == image.digest
            amd64 = image.children["linux/amd64"]
            assert admin.get(f"/v2/ghcr.io/owner/b/manifests/{amd64.digest}").status_code == 200
            report = inspect(admin, "ghcr.io/owner/b:1")
            assert report["key"] == "ghcr.io/owner/b" and report["digest"] == image.digest
            platforms = {m["platform"]: m for m in report["manifests"]}
            assert set(platforms) == {"linux/amd64", "linux/arm64/v8"}
            assert platforms["linux/amd64"]["cached"] and platforms["linux/amd64"]["blobs"]
            assert platforms["linux/arm64/v8"]["cached"] is False
            assert platforms["linux/arm64/v8"]["blobs"] is None
            assert report["complete"] is False
            assert inspect(admin, "gh.mirror/owner/b:1")["digest"] == image.digest
            assert inspect(admin, "owner/b:1")["digest"] == hub.digest  # the default's
            # Refresh fetches every platform's manifest.
            result = refresh(admin, "ghcr.io/owner/b:1").json()
            assert result["fetched"] == [image.children["linux/arm64"].digest]
            assert inspect(admin, "ghcr.io/owner/b:1")["manifests"][1]["cached"]
            gone = forget(admin, "ghcr.io/owner/b:1")
            assert gone["repository"] == "ghcr.io/owner/b" and gone["images"] == 1
            assert inspect(admin, "owner/b:1")["complete"]  # docker.io's stays
            error_of(
                admin.get("/admin/images", params={"image": "quay.io/x/y:1"}), 404, "NOT_MIRRORED"
            )


def test_refresh_joins_a_pull_fetching_the_same_manifest(
    upstream: RegistryProcess, proxy: FaultyProxy, htpasswd: Path, mirror_factory: MirrorFactory
) -> None:
    """A client is fetching the manifest the tag names: a refresh then takes it from
    that one download, never a second one."""
    mirror = mirror_factory(proxy.url, args=admin_args(htpasswd))
    second = push_image(upstream.url, "library/app", "1", layers=[3000, 2000], seed=12)
    gate = proxy.gate("GET", rf"/manifests/{second.digest}$", at_bytes=0)
    answers: dict[str, httpx.Response] = {}

    def ask(name: str, call: Callable[[httpx.Client], httpx.Response]) -> threading.Thread:
        def run() -> None:
            with session(mirror) as client:
                answers[name] = call(client)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    tag_path = r"/manifests/1$"
    pulling = ask(
        "pull",
        lambda c: c.get("/v2/library/app/manifests/1", headers={"Accept": MANIFEST_ACCEPT}),
    )
    gate.wait_reached()
    refreshing = ask("refresh", lambda c: refresh(c, "app:1"))
    # The refresh has its answer to HEAD, then asks for the manifest it names.
    wait_until(
        lambda: sum(r.status is not None for r in proxy.requests("HEAD", tag_path)) == 2,
        timeout=15,
    )
    time.sleep(0.5)
    gate.release()
    for thread in (pulling, refreshing):
        thread.join(timeout=60)
    assert answers["pull"].headers["Docker-Content-Digest"] == second.digest
    result = answers["refresh"].json()
    assert (result["new"], result["fetched"]) == (second.digest, [second.digest])
    assert proxy.count("GET", rf"/manifests/{second.digest}$") == 1
    assert_log_quiet(mirror.log())


@contextlib.contextmanager
def slow_download(mirror: MirrorProcess, path: str) -> Iterator[socket.socket]:
    """A GET whose client takes its bytes only when the test reads them: a small receive
    buffer, so the server is still sending (the blob in use) until the test reads on."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # before connect
    raw.settimeout(60)
    raw.connect(("127.0.0.1", mirror.port))
    conn = raw
    if mirror.tls:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        conn = context.wrap_socket(raw)
    credentials = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
    conn.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {mirror.host}\r\n"
        f"Authorization: Basic {credentials}\r\nConnection: close\r\n\r\n".encode()
    )
    try:
        yield conn
    finally:
        conn.close()


def read_body(conn: socket.socket, first: bytes) -> bytes:
    """The rest of a ``Connection: close`` response after ``first`` (headers included)."""
    data = bytearray(first)
    while chunk := conn.recv(1 << 16):
        data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return body


def test_forget_while_a_client_downloads(
    admin_mirror: MirrorProcess, upstream: RegistryProcess, proxy: FaultyProxy
) -> None:
    """The layer being sent stays (in use); the client gets all of it, verified."""
    image = push_image(upstream.url, "library/big", "1", layers=[16 << 20], seed=6)
    layer = image.layer_digests[0]
    with session(admin_mirror) as admin:
        pull(admin, image)
        complete(admin, "big:1")  # indexed: a forget now sees the layer
        with slow_download(admin_mirror, f"/v2/library/big/blobs/{layer}") as download:
            first = download.recv(1 << 16)  # the transfer has started, then waits for us
            with session(admin_mirror) as other:
                gone = forget(other, "big:1")
            body = read_body(download, first)
        assert f"sha256:{hashlib.sha256(body).hexdigest()}" == layer
        assert gone["in_use"] == 1 and gone["images"] == 1, json.dumps(gone)
        assert gone["files"] == 2  # the manifest and the config; the layer was in use
        assert blob_file(admin_mirror.root, layer).exists()
        proxy.clear_log()
        pull_head_first(admin, image)  # as Docker pulls: HEAD the tag, then by digest
        assert proxy.count("GET", rf"/manifests/{image.digest}$") == 1
    assert_log_quiet(admin_mirror.log())


HOSTILE_IMAGES = [
    "../../etc/passwd",
    "library/../../x:1",
    "a" * 600,
    "App:1",
    "app:" + "t" * 200,
    "app@sha256:zz",
    "app@md5:" + "0" * 32,
    "app\x00:1",
    "app:1\r\nX-Injected: 1",
    "",
    "/",
    "ghcr.io/../../x",
]


def test_hostile_input(
    upstream: RegistryProcess, proxy: FaultyProxy, htpasswd: Path, mirror_factory: MirrorFactory
) -> None:
    mirror = mirror_factory(proxy.url, args=admin_args(htpasswd))
    image = push_image(upstream.url, "library/app", "1", layers=[3000], seed=7)
    with session(mirror) as admin:
        pull(admin, image)
        baseline = resources(mirror.pid)
        for _ in range(3):
            for text in HOSTILE_IMAGES:
                error_of(admin.get("/admin/images", params={"image": text}), 400, "BAD_IMAGE")
                error_of(refresh(admin, text), 400, "BAD_IMAGE")
                bad = admin.post("/admin/images/forget", json={"image": text})
                error_of(bad, 400, "BAD_IMAGE")
            for body in (b"not json", b"[1, 2]", b"[" * 10_000, b'{"image": 5}', b"{}"):
                sent = admin.post(
                    "/admin/images/forget",
                    content=body,
                    headers={"Content-Type": "application/json"},
                )
                error_of(sent, 400, "BAD_REQUEST")
            unknown = admin.post("/admin/images/forget", json={"image": "app:1", "all": True})
            assert "unknown fields: all" in error_of(unknown, 400, "BAD_REQUEST")
            huge = admin.post(
                "/admin/images/refresh",
                content=b'{"image": "' + b"a" * (1 << 20) + b'"}',
                headers={"Content-Type": "application/json"},
            )
            error_of(huge, 413, "TOO_LARGE")

            def chunked() -> Iterator[bytes]:
                yield b'{"image": "'
                for _ in range(64):
                    yield b"a" * 4096

            streamed = admin.post(
                "/admin/images/refresh",
                content=chunked(),
                headers={"Content-Type": "application/json"},
            )
            error_of(streamed, 413, "TOO_LARGE")
            error_of(admin.get("/admin/images"), 400, "BAD_REQUEST")
            error_of(admin.get("/admin/images/..%2f..%2fv2%2f"), 404, "NOT_FOUND")
            flag = admin.post("/admin/images/forget", json={"image": "app:1", "tag_only": "x"})
            error_of(flag, 400, "BAD_REQUEST")
        # Nothing was removed by any of it, and nothing leaked.
        complete(admin, "app:1")
        assert_returns_to_baseline(mirror.pid, baseline)
    assert_log_quiet(mirror.log())


def test_concurrent_forgets_and_pulls_leave_a_sound_cache(
    upstream: RegistryProcess, proxy: FaultyProxy, htpasswd: Path, mirror_factory: MirrorFactory
) -> None:
    mirror = mirror_factory(proxy.url, args=admin_args(htpasswd))
    images = [
        push_image(upstream.url, f"library/app{i}", "1", layers=[20_000, 4_000 + i], seed=8)
        for i in range(3)
    ]  # the 20 kB layer is shared by all three
    failures: list[str] = []
    with session(mirror) as admin:
        for image in images:
            pull(admin, image)

        def churn(image: PushedImage) -> None:
            with session(mirror) as client:
                for _ in range(3):
                    try:
                        pull(client, image)
                        response = client.post(
                            "/admin/images/forget", json={"image": image.reference}
                        )
                        assert response.status_code in (200, 404), response.text
                    except (AssertionError, httpx.HTTPError) as exc:
                        failures.append(f"{image.repo}: {exc}")

        threads = [threading.Thread(target=churn, args=(image,)) for image in images]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert failures == []
        for image in images:
            pull(admin, image)
            complete(admin, image.reference)
    assert_log_quiet(mirror.log())
