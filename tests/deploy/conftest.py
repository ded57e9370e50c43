"""The container image, built once per run by ``deploy/image/build.sh`` (``make image``)
into root's container storage, where podman and podman-compose find it as ``TAG``, and as an
oci-archive that the tests' own podmans load."""

from __future__ import annotations

from typing import Final

import pytest

from tests.support.container import BuiltImage, build_image

TAG: Final = "localhost/registry-mirror:test"


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    return build_image(tmp_path_factory.mktemp("image"), TAG)
