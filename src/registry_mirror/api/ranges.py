"""``Range: bytes=…`` for blob GETs (clients resume downloads with it)."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["Unsatisfiable", "parse_range"]

_RANGE_RE: Final = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


class Unsatisfiable(Exception):
    """A well-formed range outside the blob: 416."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``[start, end)`` for a single byte range, or None to send the whole blob.

    Malformed and multi-part ranges are ignored (RFC 9110 allows that); a
    range that starts at or past the end raises :class:`Unsatisfiable`.
    """
    if header is None:
        return None
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        suffix = int(last)
        if suffix == 0:
            raise Unsatisfiable
        return (max(0, size - suffix), size)
    start = int(first)
    if last and int(last) < start:
        return None  # last < first: invalid, ignore
    if start >= size:
        raise Unsatisfiable
    end = size if not last else min(int(last) + 1, size)
    return (start, end)
