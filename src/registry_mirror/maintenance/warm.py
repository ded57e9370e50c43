"""``warm``: pull images through a running mirror, so its cache holds them."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp

from registry_mirror.config import redact_url
from registry_mirror.media_types import (
    INDEX_TYPES,
    MANIFEST_ACCEPT,
    ManifestParseError,
    Platform,
    parse_manifest,
)
from registry_mirror.reference import Digest, parse_digest

__all__ = ["MirrorAccess", "WarmError", "WarmResult", "split_image", "warm"]


@dataclass
class WarmResult:
    image: str
    manifests: int = 0
    blobs: int = 0
    bytes: int = 0
    error: str | None = None
    platforms: list[str] = field(default_factory=list)


def split_image(ref: str) -> tuple[str, str]:
    """``alpine:3.20`` → (``alpine``, ``3.20``); ``x/y@sha256:…`` → (``x/y``, digest).
    A registry host in front (``ghcr.io/x/y``) stays part of the path; the mirror
    routes it."""
    if "@" in ref:
        name, _, reference = ref.partition("@")
        parse_digest(reference)
        return name, reference
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = ref.rpartition(":")
        return name, tag
    return ref, "latest"


@dataclass(frozen=True, slots=True)
class MirrorAccess:
    """How ``warm`` reaches the mirror: its URL (never with user info), credentials for
    its Basic authentication, and TLS verification (a CA file, or none at all)."""

    url: str
    username: str | None = None
    password: str | None = None
    tls_verify: bool = True
    ca_cert: Path | None = None

    @classmethod
    def parse(cls, url: str, **kwargs: Any) -> MirrorAccess:
        """User info in the URL is taken as the credentials (unless given apart) and
        removed from it, so that it is printed nowhere."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--mirror {redact_url(url)!r}: expected http(s)://host[:port]")
        if parts.username is not None and kwargs.get("username") is None:
            kwargs["username"] = unquote(parts.username)
            if kwargs.get("password") is None and parts.password is not None:
                kwargs["password"] = unquote(parts.password)
        return cls(redact_url(url).rstrip("/"), **kwargs)

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.url.startswith("https:"):
            return True
        if not self.tls_verify:
            return False
        context = ssl.create_default_context()
        if self.ca_cert is not None:
            try:
                context.load_verify_locations(self.ca_cert)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"--ca-cert {self.ca_cert}: {exc}") from None
        return context


async def warm(
    mirror: MirrorAccess | str,
    images: Iterable[str],
    *,
    platforms: list[Platform] | None,
    concurrency: int,
    on_bytes: Callable[[int], None] | None = None,
    on_image: Callable[[WarmResult], None] | None = None,
) -> list[WarmResult]:
    """Pull images through a running mirror (its own cache logic fills the cache),
    checking and discarding the bytes. Safe to re-run: what is cached is a fast hit."""
    access = MirrorAccess.parse(mirror) if isinstance(mirror, str) else mirror
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
    auth = None
    if access.username is not None:
        auth = aiohttp.BasicAuth(access.username, access.password or "")
    async with aiohttp.ClientSession(
        access.url,
        timeout=timeout,
        auto_decompress=False,
        auth=auth,
        connector=aiohttp.TCPConnector(ssl=access.ssl_context()),
    ) as session:
        warmer = _Warmer(session, asyncio.Semaphore(concurrency), platforms, on_bytes)

        async def one(ref: str) -> WarmResult:
            result = WarmResult(ref)
            try:
                name, reference = split_image(ref)
                await warmer.manifest(name, reference, result, top=True)
            except (aiohttp.ClientError, TimeoutError, WarmError, ValueError) as exc:
                result.error = _redact_userinfo(str(exc)) or type(exc).__name__
            if on_image is not None:
                on_image(result)
            return result

        return list(await asyncio.gather(*(one(ref) for ref in images)))


class WarmError(Exception):
    """An image that could not be warmed (told in the summary)."""


@dataclass
class _Warmer:
    session: aiohttp.ClientSession
    semaphore: asyncio.Semaphore
    platforms: list[Platform] | None
    on_bytes: Callable[[int], None] | None

    async def manifest(
        self, name: str, reference: str, result: WarmResult, *, top: bool = False
    ) -> None:
        async with (
            self.semaphore,
            self.session.get(
                f"/v2/{name}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
            ) as response,
        ):
            body = await response.read()
            if response.status != 200:
                raise WarmError(f"{name}:{reference}: {response.status} {_error_text(body)}")
            media_type = response.headers.get("Content-Type", "").split(";")[0]
        result.manifests += 1
        try:
            parsed = parse_manifest(body, media_type)
        except ManifestParseError as exc:
            raise WarmError(f"{name}:{reference}: {exc}") from exc
        if media_type in INDEX_TYPES:
            if not top:
                raise WarmError(f"{name}:{reference}: nested index")
            children = [
                (platform, digest)
                for platform, digest, _ in parsed.platforms
                if self.platforms is None or any(_matches(platform, p) for p in self.platforms)
            ]
            if not children:
                raise WarmError(f"{name}:{reference}: no manifest for the platforms asked")
            await asyncio.gather(
                *(self.manifest(name, str(digest), result) for _, digest in children)
            )
            result.platforms = sorted(str(platform) for platform, _ in children)
            return
        await asyncio.gather(*(self.blob(name, digest, result) for digest in parsed.references))

    async def blob(self, name: str, digest: Digest, result: WarmResult) -> None:
        async with self.semaphore, self.session.get(f"/v2/{name}/blobs/{digest}") as response:
            if response.status != 200:
                text = _error_text(await response.read())
                raise WarmError(f"{name}@{digest}: {response.status} {text}")
            hasher = digest.hasher()
            async for chunk in response.content.iter_chunked(1024 * 1024):
                hasher.update(chunk)
                result.bytes += len(chunk)
                if self.on_bytes is not None:
                    self.on_bytes(len(chunk))
            if hasher.hexdigest() != digest.hex:
                raise WarmError(f"{name}@{digest}: content does not match its digest")
        result.blobs += 1


def _redact_userinfo(text: str) -> str:
    """Any ``scheme://user:password@`` in an error text, without the user info."""
    return re.sub(r"(\w+://)[^/@\s]*@", r"\1", text)


def _matches(have: Platform, want: Platform) -> bool:
    return (have.os, have.architecture) == (want.os, want.architecture) and (
        want.variant is None or have.variant == want.variant
    )


def _error_text(body: bytes) -> str:
    try:
        errors = json.loads(body)["errors"]
        return "; ".join(f"{e['code']}: {e['message']}" for e in errors)
    except (ValueError, KeyError, TypeError):
        return body[:200].decode(errors="replace")
