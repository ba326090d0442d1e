"""A remote shard read in blocks through an fsspec cache, over a bounded range transport.

A ZIP reader asks for many small pieces: the end record, the central directory, then for
each child a 30-byte local header, its name and its bytes. Sent one by one, each is an
HTTP request. Reads here go through :class:`fsspec.caching.BlockCache` instead: the shard
is fetched in aligned blocks (``CUBECAST_RANGE_BLOCK``, default 2 MiB) and the last 16
are kept, so a sample's manifest and small streams
cost one request, and its neighbours in the same shard often none. Every block is still
one read of the inner file (an :class:`~pipeline.taco.http.HttpRangeFile`), under its
size and time limits.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import SourceError
from pipeline.sources.limits import env_size
from pipeline.taco.rangefile import RangeFile

BLOCK = 2 << 20
BLOCKS = 16
MIN_BLOCK, MAX_BLOCK = 512, 64 << 20  # a block is held in memory BLOCKS times over


class CachedRangeFile(RangeFile):
    """``inner``'s bytes, read ``blocksize`` at a time through an LRU of ``maxblocks``.

    Memory is bounded by ``blocksize * maxblocks`` per open file. ``ranges`` are the
    inner file's reads: one per block fetched."""

    def __init__(
        self, inner: RangeFile, blocksize: int | None = None, maxblocks: int | None = None
    ) -> None:
        from fsspec.caching import BlockCache  # only remote reads need fsspec

        self.inner = inner
        self.size = inner.size
        self.pos = 0
        self.blocksize = blocksize or env_size("CUBECAST_RANGE_BLOCK", BLOCK)
        if not MIN_BLOCK <= self.blocksize <= MAX_BLOCK:
            raise SourceError(
                f"range cache block of {self.blocksize:,} bytes (CUBECAST_RANGE_BLOCK): must "
                f"be between {MIN_BLOCK:,} and {MAX_BLOCK:,}"
            )
        blocks = maxblocks or BLOCKS
        self.cache = BlockCache(self.blocksize, self._fetch, self.size, maxblocks=blocks)

    @property
    def ranges(self) -> Any:
        return getattr(self.inner, "ranges", [])

    def _fetch(self, start: int, end: int) -> bytes:
        """One block from the inner file (the last block ends at the file's end)."""
        return self.inner.read_range(start, min(end, self.size))

    def read_range(self, start: int, end: int) -> bytes:
        return self.cache._fetch(start, end)  # fsspec's own files call it so

    def close(self) -> None:
        self.cache = None  # type: ignore[assignment]  (its blocks go with it)
        self.inner.close()
        super().close()
