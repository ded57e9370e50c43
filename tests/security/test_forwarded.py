"""Who the client is behind a reverse proxy: ``X-Forwarded-For`` through a real nginx
(appending its peer, or replacing the header), hand-made headers a proxy may pass on
(several lines, over-long chains, hops that are not addresses), and the client and user
the access log names."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from registry_mirror.api.clients import MAX_FORWARDED_HOPS
from tests.conftest import MirrorFactory
from tests.support.mirror import MirrorProcess, assert_log_quiet
from tests.support.nginx import APPEND, REPLACE, Nginx, forwarded_for
from tests.support.registry import RegistryProcess, make_htpasswd_line
from tests.support.resources import assert_returns_to_baseline, resources

# All of 127/8 is loopback: the test's clients connect from 127.0.0.2 (outside the allow
# list) and 127.0.0.3 (inside it); nginx reaches the mirror from 127.0.0.1, the one
# trusted proxy. A real client address is then never mistaken for the proxy's.
OUTSIDER = "127.0.0.2"
INSIDER = "127.0.0.3"
ALLOW = ["--access-allow", f"10.0.0.0/8,{INSIDER}/32"]
TRUSTED = ["--access-trusted-proxies", "127.0.0.1/32"]
FAKE = "10.0.0.5"  # inside the allow list: what a spoofer claims to be


def get(url: str, source: str, headers: list[tuple[str, str]] | None = None) -> int:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=url, transport=transport, trust_env=False, timeout=10) as c:
        return c.get("/v2/", headers=headers or []).status_code


@pytest.fixture
def behind(upstream: RegistryProcess, mirror_factory: MirrorFactory) -> MirrorProcess:
    return mirror_factory(upstream.url, args=[*ALLOW, *TRUSTED])


@pytest.mark.parametrize("header", [APPEND, REPLACE])
def test_forwarded_for_through_nginx(behind: MirrorProcess, tmp_path: Path, header: str) -> None:
    front = forwarded_for(header)
    with Nginx(tmp_path / "nginx", [behind.url], location=front) as nginx:
        assert get(nginx.url, INSIDER) == 200
        assert get(nginx.url, OUTSIDER) == 403
        spoofs = [
            [("X-Forwarded-For", FAKE)],
            [("X-Forwarded-For", ", ".join([FAKE] * 32))],  # the chain cut at 32 entries
            [("X-Forwarded-For", ", ".join([FAKE] * 200))],
            [("X-Forwarded-For", FAKE), ("X-Forwarded-For", FAKE)],
            [("X-Forwarded-For", "not-an-address")],
            [("X-Forwarded-For", f"{FAKE}, 127.0.0.1")],  # claims nginx forwarded it
        ]
        for headers in spoofs:
            assert get(nginx.url, OUTSIDER, headers) == 403, headers
        # The allowed client stays allowed whatever it sends before its own address.
        assert get(nginx.url, INSIDER, [("X-Forwarded-For", "192.0.2.1")]) == 200
    assert_log_quiet(behind.log())


def test_hand_made_forwarded_headers(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    """What the trusted proxy (this test, from 127.0.0.1, itself allowed: its health
    checks) may pass on. The client is the rightmost hop that is not a trusted proxy,
    over every header line; a hop that is not an address is nobody, never the proxy."""
    mirror = mirror_factory(
        upstream.url, args=["--access-allow", "10.0.0.0/8,127.0.0.1/32", *TRUSTED]
    )
    baseline = resources(mirror.pid)
    chain = ", ".join
    cases: list[tuple[list[str], int]] = [
        ([], 200),  # the proxy's own request
        ([FAKE], 200),  # believed from the trusted proxy
        (["192.0.2.7"], 403),
        ([f"192.0.2.7, {FAKE}:4711"], 200),  # a hop with a port
        (["192.0.2.7, [2001:db8::1]:443"], 403),
        ([f"{FAKE}, 127.0.0.1"], 200),  # the proxy itself in the chain is skipped
        ([FAKE, "192.0.2.7"], 403),  # two lines: the last one holds the client
        ([FAKE, "192.0.2.7", ""], 403),  # an empty line names nobody
        ([chain([FAKE] * 32 + ["192.0.2.7"])], 403),
        ([(FAKE + ",") * 800 + "192.0.2.7"], 403),  # over-long: the right end counts
        ([f"{FAKE}, garbage"], 403),  # unparsable: not the proxy, nobody allowed
        ([f"{FAKE}, [::1"], 403),
        ([f"{FAKE}, 2001:db8::1]:80"], 403),
        ([f"{FAKE}, 10.0.0.6:http"], 403),
        ([chain([FAKE] + ["127.0.0.1"] * (MAX_FORWARDED_HOPS + 1))], 403),  # too many
        ([chain(["127.0.0.1"] * (MAX_FORWARDED_HOPS - 1))], 200),  # only proxies: itself
    ]
    for lines, expected in cases:
        headers = [("X-Forwarded-For", line) for line in lines]
        assert get(mirror.url, "127.0.0.1", headers) == expected, lines
    assert_returns_to_baseline(mirror.pid, baseline)
    assert_log_quiet(mirror.log())


def test_access_log_names_the_client_and_the_user(
    upstream: RegistryProcess, mirror_factory: MirrorFactory, tmp_path: Path
) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(make_htpasswd_line("carol", "carols-pw") + "\n")
    mirror = mirror_factory(
        upstream.url,
        args=[*TRUSTED, "--auth-htpasswd-path", str(htpasswd)],
    )
    with Nginx(tmp_path / "nginx", [mirror.url], location=forwarded_for(APPEND)) as nginx:
        transport = httpx.HTTPTransport(local_address=INSIDER)
        with httpx.Client(base_url=nginx.url, transport=transport, trust_env=False) as client:
            assert client.get("/v2/", auth=("carol", "carols-pw")).status_code == 200
            assert client.get("/v2/_catalog?n=1").status_code == 200
            assert client.get("/v2/", auth=("carol", "wrong")).status_code == 401
    lines = [line for line in mirror.log().splitlines() if "aiohttp.access" in line]
    assert any(
        re.search(rf'access: {re.escape(INSIDER)} carol "GET /v2/ HTTP/1.1" 200 ', line)
        for line in lines
    ), lines
    assert any(
        re.search(rf'access: {re.escape(INSIDER)} - "GET /v2/_catalog\?n=1 HTTP/1.1" 200 ', line)
        for line in lines
    ), lines
    # A refused login names no user (what was typed may be a password in the wrong field).
    assert any(
        re.search(rf'access: {re.escape(INSIDER)} - "GET /v2/ HTTP/1.1" 401 ', line)
        for line in lines
    ), lines
    # Every request that came through nginx is logged under the client, not the proxy.
    through_nginx = [line for line in lines if "python-httpx" in line]
    assert len(through_nginx) == 3
    assert all(f"access: {INSIDER} " in line for line in through_nginx), through_nginx
