"""The health checks: what each one asks, and how its failure reads.

A check is a probe (a coroutine that returns when healthy and raises :class:`CheckFailed`
with a sentence for a person otherwise) with its schedule. They never touch the event
loop's time: the store is written through the store's own threads, the index asked
through its own thread, a file looked at on a worker thread, a URL or an address asked
with a timeout. :mod:`registry_mirror.health.monitor` runs them in the background.

Readiness checks (the store, the index, the free disk, ``health.file``) decide whether the
mirror should get traffic; the others (``health.http``, ``health.tcp``) are registry:2's
checks of things beside it, reported in ``/debug/health`` only: a dependency's outage
must not take the cache out of service, as an upstream's does not.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp

from registry_mirror.config import redact_url
from registry_mirror.config.sections import HTTPCheckSettings, TCPCheckSettings
from registry_mirror.index import Index, IndexFailure
from registry_mirror.storage import BlobStore, Capacity, StorageError

__all__ = [
    "STORAGE_CHECK_TIMEOUT",
    "Check",
    "CheckFailed",
    "describe_size",
    "file_check",
    "http_check",
    "storage_checks",
    "tcp_check",
]

#: A storage, index or file check with no answer this long counts as failed.
STORAGE_CHECK_TIMEOUT: Final = 10.0
PROBE_BYTES: Final = b"registry-mirror health check\n"

Probe = Callable[[], Coroutine[object, object, None]]


class CheckFailed(Exception):
    """A check found something wrong; the message says what, for a person."""


@dataclass(frozen=True, slots=True)
class Check:
    name: str  # as /readyz and /debug/health name it
    probe: Probe
    interval: float  # seconds between the end of one run and the start of the next
    threshold: int  # consecutive failures before it counts as failing
    timeout: float  # a run without an answer this long is a failure
    readiness: bool  # counts for /readyz (else /debug/health only)


def describe_size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def storage_checks(
    store: BlobStore, index: Index, *, min_free: int, interval: float, threshold: int
) -> list[Check]:
    """registry:2's ``health.storagedriver``: the store takes a write, the index
    answers, the filesystem has ``min_free`` bytes free (when the store can tell)."""

    async def store_writable() -> None:
        # A small staged write, always aborted: written and removed on the store's own
        # threads, on the same filesystem (and through the same code) as every download.
        try:
            staged = await store.begin_write()
            try:
                await staged.write(PROBE_BYTES)
            finally:
                await staged.abort()
        except StorageError as exc:
            raise CheckFailed(f"the store takes no writes: {exc}") from None

    async def index_answers() -> None:
        try:
            await index.ping()
        except IndexFailure as exc:
            raise CheckFailed(f"the index does not answer: {exc}") from None

    def readiness(name: str, probe: Probe) -> Check:
        return Check(name, probe, interval, threshold, STORAGE_CHECK_TIMEOUT, True)

    checks = [
        readiness("storagedriver_filesystem", store_writable),
        readiness("index", index_answers),
    ]
    if min_free and isinstance(store, Capacity):
        sized = store

        async def disk_free() -> None:
            free = await sized.free_space()
            if free is None:
                raise CheckFailed("cannot tell the free space of the cache's filesystem")
            if free < min_free:
                raise CheckFailed(
                    f"{describe_size(free)} free on the cache's filesystem, below"
                    f" health.min_free ({describe_size(min_free)})"
                )

        checks.append(readiness("disk", disk_free))
    return checks


def file_check(path: Path, interval: float) -> Check:
    """registry:2's ``health.file``: failing while the file exists (an operator's way to
    take the mirror out of service)."""

    async def absent() -> None:
        try:
            exists = await asyncio.to_thread(os.path.lexists, path)
        except OSError as exc:
            raise CheckFailed(f"cannot look at {path}: {exc.strerror}") from None
        if exists:
            raise CheckFailed(f"{path} exists")

    return Check(str(path), absent, interval, 1, STORAGE_CHECK_TIMEOUT, True)


def http_check(config: HTTPCheckSettings, session: Callable[[], aiohttp.ClientSession]) -> Check:
    """registry:2's ``health.http``: the URL answers ``statuscode``."""
    shown = redact_url(config.uri)
    headers = [(name, value) for name, values in config.headers.items() for value in values]
    timeout = aiohttp.ClientTimeout(total=config.timeout)

    async def answers() -> None:
        try:
            async with session().get(
                config.uri, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                status = response.status
        except TimeoutError:
            raise CheckFailed(f"{shown}: no answer within {config.timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise CheckFailed(f"{shown}: {exc or type(exc).__name__}") from None
        if status != config.statuscode:
            raise CheckFailed(f"{shown} answered {status}, expected {config.statuscode}")

    return Check(shown, answers, config.interval, config.threshold, config.timeout + 1, False)


def tcp_check(config: TCPCheckSettings) -> Check:
    """registry:2's ``health.tcp``: the address accepts a connection."""
    host, _, port = config.addr.rpartition(":")
    host = host.strip("[]")

    async def accepts() -> None:
        try:
            async with asyncio.timeout(config.timeout):
                _, writer = await asyncio.open_connection(host, int(port))
        except TimeoutError:
            raise CheckFailed(f"{config.addr}: no connection within {config.timeout:g}s") from None
        except OSError as exc:
            raise CheckFailed(f"{config.addr}: {exc.strerror or exc}") from None
        writer.close()  # accepted: that was the check; the close completes by itself

    return Check(config.addr, accepts, config.interval, config.threshold, config.timeout + 1, False)
