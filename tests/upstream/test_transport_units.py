"""The breaker's states and the proxy policy's host matching, on their own."""

from __future__ import annotations

import pytest

from registry_mirror.config import ConfigError, OutboundProxy, load_settings, redact_url
from registry_mirror.upstream.errors import UpstreamNotFound, UpstreamUnavailable
from registry_mirror.upstream.transport import Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fail(breaker: Breaker) -> None:
    with pytest.raises(UpstreamUnavailable), breaker.guard():
        raise UpstreamUnavailable("connection refused")


def test_breaker_opens_after_three_failures_probes_and_backs_off() -> None:
    clock = Clock()
    breaker = Breaker("up", clock=clock)
    for _ in range(2):
        fail(breaker)
    assert not breaker.is_open
    with pytest.raises(UpstreamNotFound), breaker.guard():  # an answer: alive
        raise UpstreamNotFound("404")
    for _ in range(3):
        fail(breaker)
    assert breaker.is_open
    with pytest.raises(UpstreamUnavailable, match="marked down"), breaker.guard():
        pytest.fail("a request went out while the breaker is open")
    clock.now += 5
    fail(breaker)  # the probe fails: open twice as long
    assert breaker.period == 10
    clock.now += 9
    with pytest.raises(UpstreamUnavailable, match="marked down"), breaker.guard():
        pytest.fail("a request went out while the breaker is open")
    clock.now += 1
    with breaker.guard():  # the probe answers
        pass
    assert not breaker.is_open and breaker.period == 5 and breaker.failures == 0


def test_only_one_probe_at_a_time() -> None:
    clock = Clock()
    breaker = Breaker("up", threshold=1, clock=clock)
    fail(breaker)
    clock.now += 5
    with breaker.guard(), pytest.raises(UpstreamUnavailable), breaker.guard():
        pytest.fail("a second probe went out")
    assert not breaker.is_open


@pytest.mark.parametrize(
    ("host", "port", "proxied"),
    [
        ("registry.example.com", 443, False),  # a suffix on a dot boundary
        ("registry.other.com", 443, True),
        ("badexample.com", 443, True),
        ("example.com", 443, False),
        ("cdn.internal.test", 443, False),
        ("notinternal.test", 443, True),
        ("10.1.2.3", 80, False),
        ("11.1.2.3", 80, True),
        ("::1", 5000, False),
        ("::1", 5001, True),
        ("mirror.local", 8080, False),
        ("mirror.local", 80, True),
    ],
)
def test_no_proxy_matching(host: str, port: int, proxied: bool) -> None:
    policy = OutboundProxy(
        None,
        "http://p:3128",
        "http://p:3128",
        ("example.com", ".internal.test", "10.0.0.0/8", "[::1]:5000", "mirror.local:8080"),
    )
    assert (policy.for_url("https", host, port) is not None) == proxied


def test_proxy_settings_from_environment_and_config() -> None:
    env = {"https_proxy": "user:pw@proxy.corp:3128", "NO_PROXY": "*"}
    settings, _ = load_settings(environ=env)
    policy = settings.outbound_proxy(settings.proxy)
    assert policy.https == "http://user:pw@proxy.corp:3128"
    assert policy.for_url("https", "registry-1.docker.io", 443) is None  # NO_PROXY=*
    assert "pw" not in repr(policy)
    assert redact_url("http://user:pw@proxy.corp:3128", mark=True) == "http://***@proxy.corp:3128"
    assert redact_url("http://user:pw@proxy.corp:3128") == "http://proxy.corp:3128"

    flags = {
        "proxy.proxy": "http://p.corp:8080",
        "upstreams": '[{name: q, url: "https://q.io", proxy: none}]',
    }
    settings, _ = load_settings(flags=flags, environ={"HTTPS_PROXY": "http://env:1"})
    default, other = settings.all_upstreams()
    assert settings.outbound_proxy(default).for_url("https", "x.io", 443) == "http://p.corp:8080"
    assert settings.outbound_proxy(other).for_url("https", "q.io", 443) is None

    with pytest.raises(ConfigError, match=r"proxy\.proxy: invalid proxy URL") as info:
        load_settings(flags={"proxy.proxy": "socks5://u:secret@h:1"}, environ={})
    assert "secret" not in str(info.value)
    with pytest.raises(ConfigError, match="HTTP_PROXY"):
        load_settings(environ={"HTTP_PROXY": "http://h:notaport"})
