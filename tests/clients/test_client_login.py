"""Real clients logging in to the mirror (htpasswd Basic auth) and pulling through it.

The mirror here runs with::

    registry-mirror serve --upstream ... \\
        --auth-htpasswd-path /etc/registry-mirror/htpasswd \\
        --auth-htpasswd-realm "Registry Mirror" \\
        --auth-anonymous "docker.io/library/*"

(``htpasswd -B`` entries, as for registry:2).  It answers ``401`` with
``WWW-Authenticate: Basic realm="Registry Mirror"`` to the ``/v2/`` ping without credentials
and to any repository the anonymous policy does not cover.

podman (containers-auth.json(5); the file defaults to ``$XDG_RUNTIME_DIR/containers/auth.json``,
or ``REGISTRY_AUTH_FILE``, or ``--authfile``)::

    podman login --tls-verify=false -u carol mirror.example:5000
    podman pull --tls-verify=false mirror.example:5000/acme/private:1

and with the registries.conf mirror (containers-registries.conf(5))::

    [[registry]]
    prefix = "docker.io"
    location = "docker.io"
    [[registry.mirror]]
    location = "mirror.example:5000"
    insecure = true

``podman pull docker.io/acme/private:1`` sends the credentials stored for
``mirror.example:5000`` (the mirror's host, not ``docker.io``) to the mirror.

skopeo (same auth file format)::

    skopeo login --tls-verify=false --authfile auth.json -u carol mirror.example:5000
    skopeo copy --authfile auth.json --src-tls-verify=false \\
        docker://mirror.example:5000/acme/private:1 dir:/tmp/private
    skopeo copy --src-creds carol:PASSWORD --src-tls-verify=false \\
        docker://mirror.example:5000/acme/private:1 dir:/tmp/private

containerd: ``/etc/containerd/certs.d/docker.io/hosts.toml`` as usual::

    server = "https://registry-1.docker.io"

    [host."http://mirror.example:5000"]
      capabilities = ["pull", "resolve"]

containerd 1.6's hosts.toml has no credential field.  ``ctr`` sends credentials with
``--user``, to every host it tries (the mirror included)::

    ctr images pull --hosts-dir /etc/containerd/certs.d --user carol:PASSWORD \\
        docker.io/acme/private:1

Kubernetes (the CRI plugin) takes them from its registry auth configuration, keyed by the
mirror's host::

    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "/etc/containerd/certs.d"
    [plugins."io.containerd.grpc.v1.cri".registry.configs."mirror.example:5000".auth]
      username = "carol"
      password = "PASSWORD"

(or an image pull secret).  Anonymous clients pull what ``--auth-anonymous`` allows with no
configuration at all.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MirrorFactory
from tests.support.clients import (
    DroppingProxy,
    mirror_access_lines,
    registries_conf,
)
from tests.support.containerd import Containerd
from tests.support.images import PushedImage, push_image
from tests.support.mirror import MirrorProcess, assert_log_quiet
from tests.support.podman import Podman, PodmanFactory
from tests.support.registry import RegistryProcess, make_htpasswd_line
from tests.support.skopeo import assert_dir_copy, skopeo_attempt

PASSWORD = "Cl13nt-l0gin-s3cret"
REALM = "Registry Mirror"


def assert_secret_not_logged(mirror: MirrorProcess) -> None:
    log = mirror.log()
    assert PASSWORD not in log
    assert base64.b64encode(f"carol:{PASSWORD}".encode()).decode() not in log
    assert_log_quiet(log)


# --- fixtures ------------------------------------------------------------------------------


def login_args(authfile: str, host: str, user: str, password: str) -> list[str]:
    """``login`` as podman and skopeo both spell it, to an auth file of the test's."""
    return [
        "login",
        "--tls-verify=false",
        "--authfile",
        str(authfile),
        "-u",
        user,
        "-p",
        password,
        host,
    ]


@pytest.fixture
def images(upstream: RegistryProcess) -> dict[str, PushedImage]:
    return {
        "public": push_image(upstream.url, "library/public", "1", layers=[40_000], seed=71),
        "private": push_image(upstream.url, "acme/private", "1", layers=[50_000], seed=72),
    }


@pytest.fixture
def auth_mirror(
    upstream: RegistryProcess,
    images: dict[str, PushedImage],
    mirror_factory: MirrorFactory,
    tmp_path: Path,
) -> Iterator[MirrorProcess]:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(make_htpasswd_line("carol", PASSWORD) + "\n")
    mirror = mirror_factory(
        upstream.url,
        name="auth-mirror",
        args=[
            "--auth-htpasswd-path",
            str(htpasswd),
            "--auth-htpasswd-realm",
            REALM,
            "--auth-anonymous",
            "docker.io/library/*",
        ],
    )
    yield mirror
    assert_secret_not_logged(mirror)


@pytest.fixture
def podman(auth_mirror: MirrorProcess, make_podman: PodmanFactory, tmp_path: Path) -> Podman:
    return make_podman(tmp_path / "podman", registries_conf(auth_mirror.host))


def image_id(image: PushedImage) -> str:
    assert image.config_digest is not None
    return image.config_digest.removeprefix("sha256:")


# --- podman --------------------------------------------------------------------------------


def test_podman_login_then_pull_from_the_mirror_host(
    podman: Podman, auth_mirror: MirrorProcess, images: dict[str, PushedImage]
) -> None:
    authfile = podman.workdir / "auth.json"
    private = f"{auth_mirror.host}/acme/private:1"

    # (podman refuses an --authfile that does not exist: the default one, empty, here.)
    refused = podman.attempt("pull", "--tls-verify=false", private)
    assert refused.returncode != 0
    assert "unauthorized" in refused.stderr.lower() or "401" in refused.stderr, refused.stderr

    podman.run(
        *login_args(str(authfile), auth_mirror.host, "carol", PASSWORD),
    )
    stored = json.loads(authfile.read_text())["auths"]
    assert list(stored) == [auth_mirror.host]

    pulled = podman.pull(private, "--tls-verify=false", "--authfile", str(authfile))
    assert pulled == image_id(images["private"])
    assert podman.inspect(private)["Digest"] == images["private"].digest


def test_podman_wrong_password_is_refused_at_login(
    podman: Podman, auth_mirror: MirrorProcess
) -> None:
    authfile = podman.workdir / "auth.json"
    proc = podman.attempt(
        *login_args(str(authfile), auth_mirror.host, "carol", "not-the-password"),
    )
    assert proc.returncode != 0
    assert "invalid username/password" in proc.stderr, proc.stderr
    assert not authfile.exists() or auth_mirror.host not in authfile.read_text()


def test_podman_registries_conf_mirror_uses_the_mirror_hosts_credentials(
    podman: Podman, auth_mirror: MirrorProcess, images: dict[str, PushedImage]
) -> None:
    # REGISTRY_AUTH_FILE this time (what podman login and pull both read).
    authfile = podman.workdir / "registry-auth.json"
    podman.extra_env = {"REGISTRY_AUTH_FILE": str(authfile)}

    without = podman.attempt("pull", "docker.io/acme/private:1")
    assert without.returncode != 0

    podman.run("login", "--tls-verify=false", "-u", "carol", "-p", PASSWORD, auth_mirror.host)
    assert auth_mirror.host in json.loads(authfile.read_text())["auths"]

    pulled = podman.pull("docker.io/acme/private:1")

    assert pulled == image_id(images["private"])
    info = podman.inspect("docker.io/acme/private:1")
    assert info["Digest"] == images["private"].digest
    assert ("GET", "/v2/acme/private/manifests/1") in mirror_access_lines(
        auth_mirror.log(), "/v2/acme/private/"
    )


def test_podman_anonymous_pull_through_registries_conf_mirror(
    podman: Podman, auth_mirror: MirrorProcess, images: dict[str, PushedImage]
) -> None:
    """No login at all: ``docker.io/library/*`` is readable anonymously.

    Having seen ``WWW-Authenticate: Basic`` on the ``/v2/`` ping, containers/image sends
    ``Authorization: Basic Og==`` (an empty user and password, ``":"``) on every request
    when it has no credentials for the host; the mirror has to take that as anonymous.
    (A proxy in between records the header.)"""
    with DroppingProxy(auth_mirror.port) as proxy:
        podman.registries_conf.write_text(registries_conf(proxy.host))
        proc = podman.attempt("pull", "--quiet", "docker.io/library/public:1")

    sent = {r.headers.get("authorization") for r in proxy.requests(r"^/v2/library/public/")}
    assert proc.returncode == 0, (
        f"{proc.stderr}\nAuthorization sent: {sent}\nmirror log:\n{auth_mirror.log()[-3000:]}"
    )
    assert proc.stdout.strip() == image_id(images["public"])
    assert podman.inspect("docker.io/library/public:1")["Digest"] == images["public"].digest


# --- skopeo --------------------------------------------------------------------------------


def skopeo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    home, tmp = tmp_path / "skopeo-home", tmp_path / "skopeo-tmp"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    return skopeo_attempt(
        "--command-timeout",
        "30s",
        *args,
        home=home,
        tmp=tmp,
        env={"XDG_RUNTIME_DIR": str(tmp)},
        timeout=60,
    )


def test_skopeo_login_authfile_and_src_creds(
    auth_mirror: MirrorProcess, images: dict[str, PushedImage], tmp_path: Path
) -> None:
    authfile = tmp_path / "skopeo-auth.json"
    source = f"docker://{auth_mirror.host}/acme/private:1"
    private = images["private"]

    def copy(dest: str, *options: str) -> subprocess.CompletedProcess[str]:
        return skopeo(
            tmp_path,
            "copy",
            "--retry-times",
            "0",
            "--src-tls-verify=false",
            *options,
            source,
            f"dir:{tmp_path / dest}",
        )

    anonymous = copy("anonymous")
    assert anonymous.returncode != 0
    assert "unauthorized" in anonymous.stderr.lower(), anonymous.stderr

    login = skopeo(
        tmp_path,
        *login_args(str(authfile), auth_mirror.host, "carol", PASSWORD),
    )
    assert login.returncode == 0, login.stderr
    assert list(json.loads(authfile.read_text())["auths"]) == [auth_mirror.host]

    with_file = copy("with-file", "--authfile", str(authfile))
    assert with_file.returncode == 0, with_file.stderr
    assert_dir_copy(tmp_path / "with-file", private)

    with_creds = copy("with-creds", "--src-creds", f"carol:{PASSWORD}")
    assert with_creds.returncode == 0, with_creds.stderr
    assert (tmp_path / "with-creds" / "manifest.json").read_bytes() == private.manifest

    wrong = copy("wrong", "--src-creds", "carol:not-the-password")
    assert wrong.returncode != 0
    assert "unauthorized" in wrong.stderr.lower() or "401" in wrong.stderr, wrong.stderr
    unknown = copy("unknown", "--src-creds", f"mallory:{PASSWORD}")
    assert unknown.returncode != 0

    bad_login = skopeo(
        tmp_path,
        *login_args(str(tmp_path / "bad-auth.json"), auth_mirror.host, "carol", "not-the-password"),
    )
    assert bad_login.returncode != 0


def test_skopeo_anonymous_copy_of_a_public_image(
    auth_mirror: MirrorProcess, images: dict[str, PushedImage], tmp_path: Path
) -> None:
    """skopeo, no credentials anywhere: the anonymous policy covers ``library/public``."""
    proc = skopeo(
        tmp_path,
        "copy",
        "--retry-times",
        "0",
        "--src-tls-verify=false",
        f"docker://{auth_mirror.host}/library/public:1",
        f"dir:{tmp_path / 'public'}",
    )
    assert proc.returncode == 0, f"{proc.stderr}\nmirror log:\n{auth_mirror.log()[-3000:]}"
    assert (tmp_path / "public" / "manifest.json").read_bytes() == images["public"].manifest


# --- containerd ----------------------------------------------------------------------------


def test_ctr_user_credentials_reach_the_hosts_toml_mirror(
    containerd: Containerd, auth_mirror: MirrorProcess, images: dict[str, PushedImage]
) -> None:
    containerd.mirror_to(auth_mirror.host)

    refused = containerd.attempt_pull("docker.io/acme/private:1")
    assert refused.returncode != 0
    refusals = [
        line
        for line in auth_mirror.log().splitlines()
        if "/v2/acme/private/manifests/1?ns=docker.io" in line and '" 401 ' in line
    ]
    assert refusals, auth_mirror.log()
    assert "docker.io/acme/private:1" not in containerd.images()

    pulled = containerd.attempt_pull("docker.io/acme/private:1", "--user", f"carol:{PASSWORD}")
    assert pulled.returncode == 0, f"{pulled.stdout}\n{pulled.stderr}"
    private = images["private"]
    assert containerd.images()["docker.io/acme/private:1"][1] == private.digest
    assert set(private.blobs) <= containerd.content()

    public = containerd.attempt_pull("docker.io/library/public:1")
    assert public.returncode == 0, f"{public.stdout}\n{public.stderr}"
    assert containerd.images()["docker.io/library/public:1"][1] == images["public"].digest
