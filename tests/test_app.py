"""The composition root: a failed start closes what it opened; a clean one serves and stops."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Final

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from registry_mirror.app import create_app
from registry_mirror.config import Settings, load_settings
from registry_mirror.index import IndexFailure
from registry_mirror.rootlock import RootLock
from tests.support.oci import oci_error_codes
from tests.support.resources import Resources, resources

#: The threads the application starts: the store's and the index's pools, the sendfile
#: workers, bcrypt's pool, the loop's default executor.
APP_THREADS: Final = ("store-", "index", "sendfile-", "bcrypt", "asyncio")
#: Descriptors of the test process itself that may come and go meanwhile (pytest's own).
FD_SLACK: Final = 2


def _settings(root: Path) -> Settings:
    settings, _ = load_settings(
        flags={"storage.filesystem.rootdirectory": str(root)},
        environ={"REGISTRY_PROXY_REMOTEURL": "http://127.0.0.1:9"},
    )
    return settings


def _app_threads(since: set[threading.Thread] | None = None) -> list[str]:
    """The application's threads alive now (those started after ``since``, if given)."""
    return sorted(
        thread.name
        for thread in threading.enumerate()
        if thread.name.startswith(APP_THREADS) and (since is None or thread not in since)
    )


def _in_root(root: Path) -> list[str]:
    """What the process holds open inside ``root``."""
    return [target for target in resources(os.getpid()).fd_targets if target.startswith(str(root))]


def assert_all_closed(root: Path, threads: set[threading.Thread], fds: Resources) -> None:
    """No thread the application started is left, no descriptor in its root, and the
    process holds (about) the descriptors it held before."""
    assert _app_threads(since=threads) == []
    assert _in_root(root) == []
    now = resources(os.getpid())
    assert now.fds <= fds.fds + FD_SLACK, sorted(set(now.fd_targets) - set(fds.fd_targets))


def test_a_failed_start_closes_what_it_opened(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    (root / "index.db").write_bytes(b"this is not a database" * 100)
    threads, fds = set(threading.enumerate()), resources(os.getpid())

    async def start() -> None:
        server = TestServer(create_app(_settings(root)), host="127.0.0.1")
        try:
            await server.start_server()
        finally:
            await server.close()

    with pytest.raises(IndexFailure):
        asyncio.run(start())
    RootLock(root).close()  # the lock was let go: another server may start
    # The store's and the index's threads and every descriptor are gone again.
    assert_all_closed(root, threads, fds)


def test_a_started_app_answers_and_stops_cleanly(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    threads, fds = set(threading.enumerate()), resources(os.getpid())
    running: list[str] = []
    held: list[str] = []

    async def run() -> tuple[int, str, int, tuple[str, bytes]]:
        server = TestServer(create_app(_settings(root)), host="127.0.0.1")
        await server.start_server()
        running.extend(_app_threads(since=threads))
        held.extend(_in_root(root))
        try:
            async with ClientSession() as session:
                async with session.get(server.make_url("/v2/")) as ping:
                    version = ping.headers.get("Docker-Distribution-API-Version", "")
                    status = ping.status
                async with session.get(server.make_url("/elsewhere")) as other:
                    return status, version, other.status, (other.content_type, await other.read())
        finally:
            await server.close()

    status, version, other, body = asyncio.run(run())
    assert (status, version) == (200, "registry/2.0")
    assert other == 404 and oci_error_codes(*body) == ["NOT_FOUND"]
    RootLock(root).close()
    # What was running (the index's thread, the sendfile workers) is gone again.
    assert any(name.startswith("index") for name in running), running
    assert any(name.startswith("sendfile-") for name in running), running
    assert str(root / "index.db") in held, held  # ... and the index's descriptors
    assert_all_closed(root, threads, fds)
