"""Fixtures of the real-client tests: podman and containerd of the tests' own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.containerd import Containerd, running_containerd
from tests.support.podman import PodmanFactory, podman_factory


@pytest.fixture
def make_podman() -> Iterator[PodmanFactory]:
    """``make_podman(workdir, registries_conf_text)``: a podman with its own storage."""
    with podman_factory() as make:
        yield make


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Containerd]:
    """A containerd daemon of the test's own (checked to leave nothing running)."""
    with running_containerd(tmp_path / "containerd") as daemon:
        yield daemon
