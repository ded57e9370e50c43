"""Repository names, tags and digests, validated once at the edge.

The grammar is the distribution reference grammar (``distribution/reference``):
everything inside the mirror takes these typed, already-valid values, so no
path or URL is ever built from unchecked client input.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final, NamedTuple

__all__ = [
    "Digest",
    "InvalidReference",
    "RepoName",
    "Tag",
    "parse_digest",
    "parse_reference",
    "parse_repo_name",
    "parse_tag",
]

MAX_NAME_LENGTH: Final = 255
_COMPONENT: Final = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE: Final = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_HEX_LENGTHS: Final = {"sha256": 64, "sha512": 128}
_DIGEST_RE: Final = re.compile(r"(sha256|sha512):([a-f0-9]+)")


class InvalidReference(ValueError):
    """A name, tag or digest that does not match the reference grammar.

    ``code`` is the OCI error code a client should see for it.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class RepoName:
    """A repository path such as ``library/alpine``."""

    value: str

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Tag:
    value: str

    def __str__(self) -> str:
        return self.value


class Digest(NamedTuple):
    """A content digest ``algorithm:hex``; only sha256 and sha512 are accepted.

    A named tuple, not a dataclass: a cache snapshot holds millions of them, and a tuple
    is built and hashed in C (both about twice as fast). Never compared with other tuples.
    """

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())


def parse_repo_name(value: str) -> RepoName:
    if not value or len(value) > MAX_NAME_LENGTH or not _NAME_RE.fullmatch(value):
        raise InvalidReference("NAME_INVALID", f"invalid repository name {_show(value)}")
    return RepoName(value)


def parse_tag(value: str) -> Tag:
    if not _TAG_RE.fullmatch(value):
        raise InvalidReference("TAG_INVALID", f"invalid tag {_show(value)}")
    return Tag(value)


def parse_digest(value: str) -> Digest:
    match = _DIGEST_RE.fullmatch(value)
    if match is None or len(match.group(2)) != _HEX_LENGTHS[match.group(1)]:
        raise InvalidReference("DIGEST_INVALID", f"invalid digest {_show(value)}")
    return Digest(match.group(1), match.group(2))


def parse_reference(value: str) -> Tag | Digest:
    """A manifest reference: a digest if it has a colon, otherwise a tag."""
    if ":" in value:
        return parse_digest(value)
    return parse_tag(value)


def _show(value: str) -> str:
    """Quote client input for an error message, bounded in length."""
    return repr(value if len(value) <= 80 else value[:77] + "...")
