"""The in-process tier: the whole application over in-memory seams, in this process.

Every test below this directory is marked ``inprocess`` (``pytest -m inprocess``).
Test functions may be ``async def``: each runs in an event loop of its own, within
``TEST_TIME_LIMIT`` seconds (a hang fails the test instead of stalling the run).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Final

import pytest

from tests.inprocess.harness import InProcessMirror, StartMirror, running_mirror
from tests.support.fakes import FakeUpstream

HERE: Final = Path(__file__).resolve().parent
TEST_TIME_LIMIT: Final = 20.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.inprocess)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    test = pyfuncitem.obj
    if not inspect.iscoroutinefunction(test):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}

    async def limited() -> None:
        async with asyncio.timeout(TEST_TIME_LIMIT):
            await test(**args)

    asyncio.run(limited())
    return True


@pytest.fixture
def start_mirror(tmp_path: Path) -> StartMirror:
    """``async with start_mirror(upstream, ..., flags={...}) as mirror``: see
    :func:`running_mirror`."""
    return functools.partial(running_mirror, tmp_path)


@pytest.fixture
def upstream() -> FakeUpstream:
    """An empty fake registry standing in for Docker Hub."""
    return FakeUpstream("https://registry-1.docker.test")


@pytest.fixture
def mirror(
    start_mirror: StartMirror, upstream: FakeUpstream
) -> Callable[[], AbstractAsyncContextManager[InProcessMirror]]:
    """``async with mirror() as m``: the mirror of ``upstream`` with default settings."""
    return functools.partial(start_mirror, upstream)
