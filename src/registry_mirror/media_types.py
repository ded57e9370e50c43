"""Manifest media types, content negotiation on ``Accept``, and manifest references."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from registry_mirror.reference import Digest, InvalidReference, parse_digest

__all__ = [
    "DOCKER_LIST",
    "DOCKER_MANIFEST",
    "IMAGE_TYPES",
    "INDEX_TYPES",
    "MANIFEST_ACCEPT",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "SCHEMA1_TYPES",
    "Accept",
    "ManifestParseError",
    "Platform",
    "detect_manifest",
    "parse_manifest",
]

OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
SCHEMA1: Final = "application/vnd.docker.distribution.manifest.v1+json"
SCHEMA1_SIGNED: Final = "application/vnd.docker.distribution.manifest.v1+prettyjws"

INDEX_TYPES: Final = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_TYPES: Final = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
SCHEMA1_TYPES: Final = frozenset({SCHEMA1, SCHEMA1_SIGNED})
# What the mirror asks upstream for: everything it can store and negotiate.
MANIFEST_ACCEPT: Final = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])


@dataclass(frozen=True, slots=True)
class Accept:
    """The manifest media types a client accepts (``Accept`` headers, comma-joined or not)."""

    types: frozenset[str]
    wildcard: bool

    @classmethod
    def parse(cls, headers: Iterable[str]) -> Accept:
        types: set[str] = set()
        wildcard = False
        for header in headers:
            for item in header[:8192].split(","):
                media_type, _, params = item.partition(";")
                media_type = media_type.strip().lower()
                if not media_type or _q_zero(params):
                    continue
                if media_type in ("*/*", "application/*"):
                    wildcard = True
                else:
                    types.add(media_type)
        return cls(frozenset(types), wildcard)

    @property
    def indexes(self) -> bool:
        return bool(self.types & INDEX_TYPES)

    @property
    def only_schema1(self) -> bool:
        """Only schema1 types named: such a client cannot use anything the mirror serves."""
        return bool(self.types) and self.types <= SCHEMA1_TYPES and not self.wildcard

    def accepts(self, media_type: str) -> bool:
        return media_type in self.types


def _q_zero(params: str) -> bool:
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip() == "q":
            try:
                return float(value) == 0
            except ValueError:
                return False
    return False


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"invalid platform {text!r} (expected os/arch[/variant])")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


class ManifestParseError(ValueError):
    """A manifest body that is not the JSON its media type promises."""


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    media_type: str
    references: list[Digest]  # config, layers, or child manifests
    platforms: list[tuple[Platform, Digest, str]]  # for an index: (platform, digest, type)

    def child_for(self, wanted: Platform) -> tuple[Digest, str] | None:
        """The child manifest for a platform (variant matched when the index names one)."""
        fallback = None
        for platform, digest, media_type in self.platforms:
            if (platform.os, platform.architecture) != (wanted.os, wanted.architecture):
                continue
            if wanted.variant is None or platform.variant in (None, wanted.variant):
                return digest, media_type
            fallback = fallback or (digest, media_type)
        return fallback


MAX_REFERENCES: Final = 10_000


def parse_manifest(body: bytes, media_type: str) -> ParsedManifest:
    """Parse an image manifest or index for what it references."""
    try:
        doc = json.loads(body.decode("utf-8"))  # UTF-8 only, as the specs say
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ManifestParseError("manifest is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise ManifestParseError("manifest is not a JSON object")
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared and media_type not in INDEX_TYPES | IMAGE_TYPES:
        media_type = declared
    references: list[Digest] = []
    platforms: list[tuple[Platform, Digest, str]] = []
    if media_type in INDEX_TYPES:
        for entry in _list(doc.get("manifests")):
            digest = _digest(entry)
            references.append(digest)
            platform = entry.get("platform")
            if isinstance(platform, dict):
                os_name = platform.get("os")
                arch = platform.get("architecture")
                variant = platform.get("variant")
                if isinstance(os_name, str) and isinstance(arch, str):
                    platforms.append(
                        (
                            Platform(os_name, arch, variant if isinstance(variant, str) else None),
                            digest,
                            str(entry.get("mediaType") or ""),
                        )
                    )
    elif media_type in IMAGE_TYPES:
        config = doc.get("config")
        if isinstance(config, dict):
            references.append(_digest(config))
        for layer in _list(doc.get("layers")):
            references.append(_digest(layer))
    if len(references) > MAX_REFERENCES:
        raise ManifestParseError(f"manifest references more than {MAX_REFERENCES} items")
    return ParsedManifest(media_type, references, platforms)


def detect_manifest(body: bytes) -> ParsedManifest | None:
    """The manifest a stored file is, if it is one of the types the mirror serves: by its
    ``mediaType``, or for an OCI manifest or index without one, by its shape. None for
    anything else (a layer, an image config, JSON of another kind)."""
    if body[:64].lstrip()[:1] != b"{":  # a layer is not parsed at all
        return None
    try:
        doc = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        return None
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared:
        media_type = declared
    elif isinstance(doc.get("manifests"), list):
        media_type = OCI_INDEX
    elif isinstance(doc.get("config"), dict) and isinstance(doc.get("layers"), list):
        media_type = OCI_MANIFEST
    else:
        return None
    if media_type not in INDEX_TYPES | IMAGE_TYPES:
        return None
    try:
        return parse_manifest(body, media_type)
    except ManifestParseError:
        return None


def _list(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ManifestParseError("manifest entries are not a list of objects")
    return value


def _digest(entry: dict[str, Any]) -> Digest:
    raw = entry.get("digest")
    if not isinstance(raw, str):
        raise ManifestParseError("manifest entry without a digest")
    try:
        return parse_digest(raw)
    except InvalidReference as exc:
        raise ManifestParseError(f"manifest entry with an invalid digest: {exc.message}") from exc
