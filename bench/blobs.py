"""Fresh blobs for the cold scenarios: pushed to the upstream, never asked of a proxy before."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from bench.config import MIB
from tests.support.images import make_client, push_blob

__all__ = ["EDGE", "FreshBlob", "FreshBlobs"]

EDGE = 64 * 1024  # bytes of each end kept, to check range answers


@dataclass(frozen=True)
class FreshBlob:
    repo: str
    digest: str
    size: int
    head: bytes  # the first EDGE bytes
    tail: bytes  # the last EDGE bytes

    def path(self) -> str:
        return f"/v2/{self.repo}/blobs/{self.digest}"


@dataclass
class FreshBlobs:
    """Makes and pushes blobs of random bytes, a different digest every time.

    Blobs of one size share their middle (random bytes made once per size); both ends are
    unique to each blob, so neither its digest nor its first and last bytes repeat.
    """

    upstream_url: str
    _middles: dict[int, bytes] = field(default_factory=dict)
    _made: int = 0

    def _middle(self, size: int) -> bytes:
        if size not in self._middles:
            rng = random.Random(size)
            chunks = (rng.randbytes(min(16 * MIB, size - o)) for o in range(0, size, 16 * MIB))
            self._middles[size] = b"".join(chunks)
        return self._middles[size]

    def push(self, repo: str, size: int) -> FreshBlob:
        if size < 4 * EDGE:
            raise ValueError(f"a fresh blob needs at least {4 * EDGE} bytes, not {size}")
        self._made += 1
        seed = f"{repo}/{self._made}/{random.getrandbits(64)}".encode()
        ends = hashlib.shake_256(seed).digest(2 * EDGE)
        middle = memoryview(self._middle(size))[EDGE : size - EDGE]
        data = b"".join((ends[:EDGE], middle, ends[EDGE:]))
        with make_client(timeout=600) as client:
            digest = push_blob(client, self.upstream_url, repo, data)
        return FreshBlob(repo, digest, size, data[:EDGE], data[-EDGE:])

    def push_many(self, repo: str, size: int, count: int) -> list[FreshBlob]:
        return [self.push(repo, size) for _ in range(count)]
