"""skopeo copying ``docker://docker.io/...`` through the mirror named in a registries.conf.

The same file as for podman (containers-registries.conf(5))::

    [[registry]]
    prefix = "docker.io"
    location = "docker.io"
    [[registry.mirror]]
    location = "mirror.example:5000"
    insecure = true

skopeo 1.9 reads, strongest first:

* ``skopeo --registries-conf FILE ...`` (a global flag it accepts but does not list in
  ``skopeo --help``),
* ``$HOME/.config/containers/registries.conf``, else ``/etc/containers/registries.conf``
  (plus the drop-ins in ``/etc/containers/registries.conf.d/``).

Unlike podman, skopeo 1.9.3 ignores the ``CONTAINERS_REGISTRIES_CONF`` environment variable
(checked below): with only that set it goes to Docker Hub.

Then ``skopeo copy docker://docker.io/library/alpine:3.20 dir:/tmp/alpine`` pulls through the
mirror: no mirror address appears on the command line.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.clients import mirror_access_lines, registries_conf
from tests.support.images import push_image
from tests.support.mirror import MirrorProcess
from tests.support.registry import RegistryProcess
from tests.support.skopeo import assert_dir_copy, skopeo_attempt


def skopeo_copy(
    tmp_path: Path, how: str, mirror: MirrorProcess, ref: str
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """``skopeo --debug copy docker://REF dir:...`` with the mirror's registries.conf given
    ``how``: ``flag`` (--registries-conf), ``home`` ($HOME/.config/...) or ``env``
    (CONTAINERS_REGISTRIES_CONF).  Returns (process, the registries.conf, the destination)."""
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    tmp.mkdir()
    conf = tmp_path / "registries.conf"
    if how == "home":
        conf = home / ".config" / "containers" / "registries.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(registries_conf(mirror.host))
    env: dict[str, str] = {}
    flags = ["--debug", "--command-timeout", "30s"]
    if how == "flag":
        flags += ["--registries-conf", str(conf)]
    elif how == "env":
        env["CONTAINERS_REGISTRIES_CONF"] = str(conf)
    dest = tmp_path / "dest"
    proc = skopeo_attempt(
        *flags,
        "copy",
        "--retry-times",
        "0",
        f"docker://{ref}",
        f"dir:{dest}",
        home=home,
        tmp=tmp,
        env=env,
    )
    return proc, conf, dest


@pytest.mark.parametrize("how", ["flag", "home"])
def test_skopeo_copy_uses_registries_conf_mirror(
    how: str, upstream: RegistryProcess, any_mirror: MirrorProcess, tmp_path: Path
) -> None:
    """Over plain HTTP and over the mirror's own TLS (``insecure = true``); the second
    copy is served from the cache."""
    mirror = any_mirror
    image = push_image(upstream.url, "library/skoapp", "3.1", layers=[250_000, 40_000], seed=31)
    upstream.clear_log()

    proc, conf, dest = skopeo_copy(tmp_path, how, mirror, "docker.io/library/skoapp:3.1")

    assert proc.returncode == 0, proc.stderr
    assert f'Loading registries configuration \\"{conf}\\"' in proc.stderr
    assert_dir_copy(dest, image)
    for digest in image.blobs:
        assert upstream.count("GET", rf"/blobs/{digest}$") == 1, digest
    requests = mirror_access_lines(mirror.log())
    assert ("GET", "/v2/library/skoapp/manifests/3.1") in requests
    for digest in image.blobs:
        assert ("GET", f"/v2/library/skoapp/blobs/{digest}") in requests

    upstream.clear_log()
    (tmp_path / "warm").mkdir()
    warm, _, warm_dest = skopeo_copy(tmp_path / "warm", how, mirror, "docker.io/library/skoapp:3.1")
    assert warm.returncode == 0, warm.stderr
    assert_dir_copy(warm_dest, image)
    assert upstream.count("GET", r"/blobs/") == 0


def test_skopeo_ignores_containers_registries_conf_env(
    upstream: RegistryProcess, mirror: MirrorProcess, tmp_path: Path
) -> None:
    """skopeo 1.9.3 does not read ``CONTAINERS_REGISTRIES_CONF`` (podman does): the README must
    not tell skopeo users to set it.  The copy goes to Docker Hub (unreachable here) and fails;
    should a newer skopeo read the variable, this fails and the docstring above needs updating."""
    push_image(upstream.url, "library/skoenv", "1", layers=[1000], seed=32)

    proc, conf, _ = skopeo_copy(tmp_path, "env", mirror, "docker.io/library/skoenv:1")

    assert proc.returncode != 0
    assert str(conf) not in proc.stderr
    assert "docker.io" in proc.stderr
    assert [t for _, t in mirror_access_lines(mirror.log()) if "skoenv" in t] == []
