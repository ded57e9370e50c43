"""Serving a blob straight from upstream, uncached, when the store cannot take it."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

from registry_mirror.mirror.errors import FillFailed
from registry_mirror.reference import Digest
from registry_mirror.upstream import BlobStream, UpstreamError

__all__ = ["DirectBlob"]


class DirectBlob:
    """One client's pass-through of an upstream download.

    A whole-blob response is hashed on the way and its last chunk held back until the
    digest and length check out, as for a fill: a client never completes a response of
    bad data.
    """

    def __init__(
        self,
        digest: Digest,
        upstream: BlobStream,
        *,
        hasher: hashlib._Hash | None = None,
        hashed: int = 0,
    ) -> None:
        """``upstream`` may start past 0 (a resume). ``hasher`` then carries the hash of
        the first ``hashed`` bytes (already sent to the client from elsewhere), so that a
        response from 0 — or one that goes on at ``hashed`` — is still verified whole."""
        if hasher is None and hashed:
            raise ValueError("hashed bytes without their hasher")
        self.digest = digest
        self._upstream = upstream
        self._hasher = hasher
        self._hashed = hashed
        self.size = upstream.size

    def __repr__(self) -> str:
        return f"<DirectBlob {self.digest} {self.size} bytes>"

    def close(self) -> None:
        """Release the upstream connection (also when :meth:`stream` never ran)."""
        self._upstream.close()

    async def stream(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)``. Verified when, with the bytes already hashed, they make
        the whole blob: ``start`` is 0, or it is where the given hasher stopped."""
        whole = start in (0, self._hashed) and end in (None, self.size)
        position = self._upstream.offset
        hasher = None
        if whole:
            hasher = self._hasher or self.digest.hasher()
            if position > self._hashed:
                raise FillFailed(f"cannot verify {self.digest} from offset {position}")
        held: bytes | None = None
        try:
            async for chunk in self._upstream.chunks():
                piece = chunk
                chunk_start = position
                position += len(piece)
                if hasher is not None and position > self._hashed:
                    # Bytes before ``hashed`` (a resume answered from 0) are in already.
                    hasher.update(piece[max(0, self._hashed - chunk_start) :])
                if position <= start:
                    continue
                if chunk_start < start:
                    piece = piece[start - chunk_start :]
                if end is not None and position > end:
                    piece = piece[: len(piece) - (position - end)]
                if held is not None:
                    yield held
                held = piece
                if end is not None and position >= end:
                    break
        except UpstreamError as exc:
            raise FillFailed(str(exc)) from exc
        finally:
            self._upstream.close()
        if whole and hasher is not None:
            actual = Digest(self.digest.algorithm, hasher.hexdigest())
            if actual != self.digest or (self.size is not None and position != self.size):
                raise FillFailed(f"upstream content of {self.digest} hashed to {actual}")
        elif end is not None and position < end:
            raise FillFailed(f"upstream ended {self.digest} early")
        if held is not None:
            yield held
