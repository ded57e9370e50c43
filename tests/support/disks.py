"""Small real filesystems for the full-disk tests: a tmpfs of a given size, and a mirror
with its cache on one."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .mirror import MirrorProcess

__all__ = ["fill_disk", "mirror_on", "tmpfs"]


@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``4m``) mounted at ``mount`` for the duration; the test is
    skipped where mounting is not allowed (it needs root)."""
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_disk(mount: Path) -> Path:
    """Take every free byte of ``mount``; the filler file to remove to give them back.
    Called again, it takes what the disk has freed since (the filler only grows)."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        # Ever smaller pieces down to a byte: no page is left free at the end.
        for size in (1 << 20, 4096, 1):
            piece = b"\0" * size
            try:
                while os.write(fd, piece):
                    pass
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler


def mirror_on(mount: Path, upstream: str, *, args: list[str] | None = None) -> MirrorProcess:
    """A mirror (not started) with its cache on ``mount`` and its log beside it: the log
    stays writable when the disk is full."""
    mirror = MirrorProcess(mount / "cache", upstream, args=args)
    mirror.log_path = mount.parent / "cache.log"
    return mirror
