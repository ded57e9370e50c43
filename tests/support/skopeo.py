"""Thin wrappers around the ``skopeo`` CLI for pulling from local (plain-HTTP) registries."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from .clients import require_tools
from .images import PushedImage

__all__ = [
    "SkopeoError",
    "assert_dir_copy",
    "skopeo_attempt",
    "skopeo_binary",
    "skopeo_copy",
    "skopeo_inspect_raw",
]


class SkopeoError(RuntimeError):
    """skopeo exited non-zero; the message holds its stderr."""


def skopeo_binary() -> str | None:
    """Path of the ``skopeo`` executable, or None if it is not installed."""
    return shutil.which("skopeo")


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    binary = skopeo_binary()
    if binary is None:
        raise SkopeoError("skopeo is not installed")
    proc = subprocess.run(
        [binary, "--insecure-policy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if proc.returncode != 0:
        raise SkopeoError(f"skopeo {' '.join(args)} -> {proc.returncode}:\n{proc.stderr}")
    return proc


def skopeo_attempt(
    *args: str, home: Path, tmp: Path, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``skopeo --insecure-policy ARGS`` with a ``HOME`` and ``TMPDIR`` of its own (none of the
    machine's configuration) plus ``env``; the caller judges the result (the test fails if
    skopeo is missing)."""
    binary = require_tools("skopeo")["skopeo"]
    return subprocess.run(
        [binary, "--insecure-policy", *args],
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "TMPDIR": str(tmp),
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def skopeo_copy(
    host: str,
    ref: str,
    dest_dir: Path,
    *,
    all_platforms: bool = False,
    creds: tuple[str, str] | None = None,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """``skopeo copy docker://HOST/REF oci:DEST_DIR[:TAG]`` over plain HTTP.

    ``host`` is ``127.0.0.1:PORT``; ``ref`` is ``repo:tag`` or ``repo@sha256:...``.  The OCI
    layout tag is the source tag (none for digest references).  ``all_platforms`` adds
    ``--all`` (copy every image of an index).
    """
    args = ["copy", "--src-tls-verify=false"]
    if all_platforms:
        args.append("--all")
    if creds is not None:
        args += ["--src-creds", f"{creds[0]}:{creds[1]}"]
    tag = "" if "@" in ref else ref.rpartition(":")[2] if ":" in ref else "latest"
    dest = f"oci:{dest_dir}:{tag}" if tag else f"oci:{dest_dir}"
    args += [f"docker://{host}/{ref}", dest]
    return _run(args, timeout)


def skopeo_inspect_raw(
    host: str, ref: str, *, creds: tuple[str, str] | None = None, timeout: float = 60.0
) -> bytes:
    """``skopeo inspect --raw docker://HOST/REF``: the manifest bytes exactly as served."""
    args = ["inspect", "--raw", "--tls-verify=false"]
    if creds is not None:
        args += ["--creds", f"{creds[0]}:{creds[1]}"]
    args.append(f"docker://{host}/{ref}")
    return _run(args, timeout).stdout.encode()


def assert_dir_copy(dest: Path, image: PushedImage) -> None:
    """What ``skopeo copy … dir:DEST`` wrote is the image byte for byte: the manifest as
    pushed and every blob under its hex digest."""
    assert (dest / "manifest.json").read_bytes() == image.manifest
    for digest, data in image.blobs.items():
        assert (dest / digest.removeprefix("sha256:")).read_bytes() == data, digest
