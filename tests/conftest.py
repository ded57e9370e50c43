"""Fixtures: a real upstream registry (Debian's docker-registry) and the real mirror process."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import httpx
import pytest

from tests.support.faulty import FaultyProxy
from tests.support.mirror import MirrorProcess
from tests.support.registry import RegistryProcess
from tests.support.tls import tls_args

MirrorFactory = Callable[..., MirrorProcess]


# The fast tier: the whole application in the test process, over fakes; no external tools.
FAST_TIER: Final = (Path(__file__).parent / "inprocess", Path(__file__).parent / "contracts")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if all(any(item.path.is_relative_to(tier) for tier in FAST_TIER) for item in items):
        return
    missing = [tool for tool in ("docker-registry", "skopeo") if shutil.which(tool) is None]
    if missing:  # CI installs them (make deps); a bare machine says so loudly instead of skipping
        raise pytest.UsageError(f"missing tools {missing}: run `make deps` first")


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[RegistryProcess]:
    """A real registry standing in for Docker Hub."""
    with RegistryProcess(tmp_path / "upstream") as registry:
        yield registry


@pytest.fixture
def proxy(upstream: RegistryProcess) -> Iterator[FaultyProxy]:
    """The fault-injecting proxy in front of ``upstream``; a module whose mirror should go
    through it overrides ``mirror`` with ``mirror_factory(proxy.url)``."""
    with FaultyProxy(upstream.url) as p:
        yield p


@pytest.fixture
def mirror_factory(tmp_path: Path) -> Iterator[MirrorFactory]:
    started: list[MirrorProcess] = []

    def make(upstream: str | None, name: str = "mirror", **kwargs: object) -> MirrorProcess:
        mirror = MirrorProcess(tmp_path / name, upstream, **kwargs)  # type: ignore[arg-type]
        started.append(mirror)
        return mirror.start()

    yield make
    for mirror in started:
        mirror.stop()


@pytest.fixture
def mirror(upstream: RegistryProcess, mirror_factory: MirrorFactory) -> MirrorProcess:
    """The mirror in front of ``upstream``, treating it as Docker Hub (``library/``)."""
    return mirror_factory(upstream.url)


@pytest.fixture
def client(mirror: MirrorProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mirror.url, timeout=60, trust_env=False) as c:
        yield c


@pytest.fixture(params=["http", "tls"])
def any_mirror(
    request: pytest.FixtureRequest,
    upstream: RegistryProcess,
    mirror_factory: MirrorFactory,
    tmp_path: Path,
) -> MirrorProcess:
    """The mirror in front of ``upstream``, once over plain HTTP and once over its own
    TLS (a self-signed certificate: clients skip verification)."""
    args = tls_args(tmp_path / "tls") if request.param == "tls" else []
    return mirror_factory(upstream.url, args=args)


@pytest.fixture
def any_client(any_mirror: MirrorProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=any_mirror.url, timeout=60, trust_env=False, verify=False) as c:
        yield c
