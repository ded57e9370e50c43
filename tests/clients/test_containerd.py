"""containerd (``ctr``) pulling ``docker.io/...`` through the mirror, configured with hosts.toml.

Configuration (containerd's ``docs/hosts.md``): a directory per registry holding a
``hosts.toml``, e.g. ``/etc/containerd/certs.d/docker.io/hosts.toml``::

    server = "https://registry-1.docker.io"

    [host."http://mirror.example:5000"]
      capabilities = ["pull", "resolve"]

``ctr`` is given the directory with ``--hosts-dir /etc/containerd/certs.d``; the CRI plugin
(Kubernetes) with::

    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "/etc/containerd/certs.d"

containerd then asks the mirror for ``/v2/library/alpine/manifests/3.20?ns=docker.io`` (the
``ns`` parameter names the registry the image belongs to) and falls back to the ``server`` when
the mirror fails.  The ``http://`` in the host name makes it plain HTTP; no ``--plain-http``.
Behind TLS the host is ``https://mirror.example:5000`` with ``ca = "/path/ca.pem"`` (or, as the
tests with a self-signed certificate do, ``skip_verify = true``).

The tests run their own containerd (:mod:`tests.support.containerd`: root, state and sockets
in temporary directories; the plugins a pull does not need are disabled) with this config::

    version = 2
    root = "TMP/root"
    state = "TMP/state"
    disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt", ...]
    [grpc]
      address = "/tmp/ctrd-XXXX/containerd.sock"
    [ttrpc]
      address = "/tmp/ctrd-XXXX/containerd.sock.ttrpc"

What containerd 1.6.20 does when the connection carrying a layer drops mid-body: it sends the
same GET again, on another connection, with ``Range: bytes=<bytes it had>-``, appends the
``206`` answer to what it had, and the pull completes (the dropped-connection test checks this).
"""

from __future__ import annotations

import re

from tests.support.clients import DroppingProxy, mirror_access_lines
from tests.support.containerd import Containerd
from tests.support.images import push_image, push_index, referenced_blobs
from tests.support.mirror import MirrorProcess, assert_log_quiet
from tests.support.registry import RegistryProcess


def test_ctr_pull_uses_hosts_toml_mirror_with_ns_parameter(
    containerd: Containerd, upstream: RegistryProcess, any_mirror: MirrorProcess
) -> None:
    """Over plain HTTP and over the mirror's own TLS (``https://`` host, ``skip_verify``);
    a second pull after the image is removed is served from the mirror's cache."""
    mirror = any_mirror
    image = push_image(upstream.url, "library/ctrapp", "1.0", layers=[400_000, 90_000], seed=21)
    upstream.clear_log()
    containerd.mirror_to(mirror.host, tls=mirror.tls)

    out = containerd.pull("docker.io/library/ctrapp:1.0")

    assert "unpacking linux/amd64" in out
    media_type, digest = containerd.images()["docker.io/library/ctrapp:1.0"]
    assert digest == image.digest
    assert media_type == image.media_type
    assert set(image.blobs) <= set(containerd.content())
    for blob in image.blobs:
        assert upstream.count("GET", rf"/blobs/{blob}$") == 1, blob
    requests = mirror_access_lines(mirror.log(), "/v2/library/ctrapp/")
    assert requests, mirror.log()
    for method, target in requests:
        assert re.search(r"[?&]ns=docker\.io(&|$)", target), (method, target)
    paths = {(method, target.split("?")[0]) for method, target in requests}
    assert ("HEAD", "/v2/library/ctrapp/manifests/1.0") in paths
    for blob in image.blobs:
        assert ("GET", f"/v2/library/ctrapp/blobs/{blob}") in paths

    containerd.forget("docker.io/library/ctrapp:1.0")
    assert not set(image.layer_digests) & containerd.content()
    upstream.clear_log()
    containerd.pull("docker.io/library/ctrapp:1.0")
    assert set(image.blobs) <= set(containerd.content())  # verified by containerd on commit
    assert upstream.count("GET", r"/blobs/") == 0


def test_ctr_pull_multi_platform_index_for_arm64(
    containerd: Containerd, upstream: RegistryProcess, mirror: MirrorProcess
) -> None:
    index = push_index(
        upstream.url, "library/ctrmulti", "2", layers=[60_000, 70_000], media="docker", seed=22
    )
    arm = index.children["linux/arm64"]
    containerd.mirror_to(mirror.host)
    upstream.clear_log()

    containerd.pull("docker.io/library/ctrmulti:2", "--platform", "linux/arm64")

    media_type, digest = containerd.images()["docker.io/library/ctrmulti:2"]
    assert (media_type, digest) == (index.media_type, index.digest)
    for blob in referenced_blobs(arm.manifest):
        assert upstream.count("GET", rf"/blobs/{blob}$") == 1, blob
    amd = index.children["linux/amd64"]
    assert upstream.count("GET", rf"/manifests/{amd.digest}$") == 0


# --- a connection dropped in the middle of a layer ----------------------------------------

DROP_AFTER = 5 << 20  # body bytes of the 20 MiB layer passed on before the connection drops


def pull_with_dropped_layer_connection(
    containerd: Containerd, upstream: RegistryProcess, mirror: MirrorProcess, repo: str
) -> tuple[str, DroppingProxy, str]:
    """Pull an image with a 20 MiB layer through a proxy that cuts the first connection
    carrying that layer after ``DROP_AFTER`` body bytes.  Returns (layer digest, proxy, ctr
    output); the proxy is stopped already but keeps its records."""
    image = push_image(upstream.url, repo, "1", layers=[20 << 20], seed=23)
    (layer,) = image.layer_digests
    upstream.clear_log()
    with DroppingProxy(mirror.port) as proxy:
        proxy.drop_once(rf"/blobs/{layer}\b", after=DROP_AFTER)
        containerd.mirror_to(proxy.host)
        out = containerd.pull(f"docker.io/{repo}:1")
    assert containerd.images()[f"docker.io/{repo}:1"][1] == image.digest
    assert layer in containerd.content()
    return layer, proxy, out


def test_ctr_pull_resumes_a_layer_after_a_dropped_connection(
    containerd: Containerd, upstream: RegistryProcess, mirror: MirrorProcess
) -> None:
    layer, proxy, _ = pull_with_dropped_layer_connection(
        containerd, upstream, mirror, "library/ctrdrop"
    )

    asked = proxy.requests(rf"/blobs/{layer}")
    assert len(asked) == 2, asked
    first, retry = asked
    assert "range" not in first.headers
    assert retry.headers.get("range") == f"bytes={DROP_AFTER}-"
    assert retry.connection != first.connection
    # The mirror answered the resume with the rest of the layer, and fetched it once.
    statuses = re.findall(
        rf'"GET /v2/library/ctrdrop/blobs/{layer}\S* HTTP/1.1" (\d+) ', mirror.log()
    )
    assert statuses[-1] == "206", mirror.log()
    assert upstream.count("GET", rf"/blobs/{layer}$") == 1


def test_ctr_dropped_connection_is_not_logged_as_a_mirror_error(
    containerd: Containerd, upstream: RegistryProcess, mirror: MirrorProcess
) -> None:
    """A client going away mid-download is routine: no 500, no traceback in the mirror's log."""
    layer, _, _ = pull_with_dropped_layer_connection(
        containerd, upstream, mirror, "library/ctrquiet"
    )

    log = mirror.log()
    statuses = re.findall(rf'"GET /v2/library/ctrquiet/blobs/{layer}\S* HTTP/1.1" (\d+) ', log)
    assert "500" not in statuses, log
    assert_log_quiet(log)
