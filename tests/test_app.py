"""The composition root: a failed start closes what it opened; a clean one serves and stops."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from registry_mirror.app import create_app
from registry_mirror.config import Settings, load_settings
from registry_mirror.index import IndexFailure
from registry_mirror.rootlock import RootLock
from tests.support.oci import oci_error_codes


def _settings(root: Path) -> Settings:
    settings, _ = load_settings(
        flags={"storage.filesystem.rootdirectory": str(root)},
        environ={"REGISTRY_PROXY_REMOTEURL": "http://127.0.0.1:9"},
    )
    return settings


def _descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_failed_start_closes_what_it_opened(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    (root / "index.db").write_bytes(b"this is not a database" * 100)
    threads, fds = threading.active_count(), _descriptors()

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
    assert threading.active_count() == threads
    assert _descriptors() == fds


def test_a_started_app_answers_and_stops_cleanly(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    threads, fds = threading.active_count(), _descriptors()

    async def run() -> tuple[int, str, int, tuple[str, bytes]]:
        server = TestServer(create_app(_settings(root)), host="127.0.0.1")
        await server.start_server()
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
    assert threading.active_count() == threads
    assert _descriptors() == fds
