"""In-memory implementations of the storage seams, for tests.

:class:`MemoryBlobStore` is the ``BlobStore`` core only (no local files, no capacity, no
staging clean-up): bytes in a dict. :class:`MemoryIndex` is the whole ``Index`` (and the
operator commands' calls of the SQLite index) in dicts, with handles that share one
content (:meth:`MemoryIndex.replica`), as processes share a database. Both pass the
contract suites in ``tests/contracts`` beside the real implementations.

Each call runs to its end without giving up the loop once it has checked its state, so
an operation is atomic (a transaction) for the other tasks; calls still yield to the
loop first, and :meth:`MemoryBlobStore.open` between chunks, as real I/O does.
"""

from tests.support.fakes.index import MemoryIndex
from tests.support.fakes.store import MemoryBlobStore, MemoryStagedBlob, MemoryStagedReader

__all__ = ["MemoryBlobStore", "MemoryIndex", "MemoryStagedBlob", "MemoryStagedReader"]
