"""In-memory implementations of the seams (storage, index, upstream), for tests.

:class:`MemoryBlobStore` is the ``BlobStore`` core only (no local files, no capacity, no
staging clean-up): bytes in a dict. :class:`MemoryIndex` is the whole ``Index`` (and the
operator commands' calls of the SQLite index) in dicts, with handles that share one
content (:meth:`MemoryIndex.replica`), as processes share a database. Both pass the
contract suites in ``tests/contracts`` beside the real implementations.
:class:`FakeUpstream` is an upstream registry in memory (the ``Upstream`` protocol), with
counted calls and fault switches, and :func:`make_image` / :func:`make_index` build the
small images it serves.

Each call runs to its end without giving up the loop once it has checked its state, so
an operation is atomic (a transaction) for the other tasks; calls still yield to the
loop first, and :meth:`MemoryBlobStore.open` between chunks, as real I/O does.
"""

from tests.support.fakes.index import MemoryIndex
from tests.support.fakes.store import MemoryBlobStore, MemoryStagedBlob, MemoryStagedReader
from tests.support.fakes.upstream import (
    FakeImage,
    FakeIndex,
    FakeUpstream,
    make_image,
    make_index,
)

__all__ = [
    "FakeImage",
    "FakeIndex",
    "FakeUpstream",
    "MemoryBlobStore",
    "MemoryIndex",
    "MemoryStagedBlob",
    "MemoryStagedReader",
    "make_image",
    "make_index",
]
