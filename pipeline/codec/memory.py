"""Keeping a long encode's footprint flat: blocks sized to the frame, freed heap returned.

Between the phases of an encode (range pass, trials, the encode pass) the freed numpy
buffers of megapixel frames stay in glibc's heap, where the next phase does not always
reuse them; a DynamicEarthNet cube's Python process grew 150 MB that way after the range
pass alone (measured). ``malloc_trim`` hands the free pages back, and the number of
heap arenas is capped: glibc gives every thread that allocates one of its own (up to 8 per
core), and the reader, encoder and trial threads each kept megapixel buffers in theirs.
Buffers over 4 MiB are mmapped, always: glibc's default raises its mmap threshold to the
size of the last large buffer freed, so megapixel frames moved into the heap, where
fragmentation kept them (a 40-day 1024 px pack: peak 815-880 MiB before, 763-802 after,
measured). A 1 MiB threshold saved a little more (741-792) but cost a PSNR-target encode
5 % in page faults of fresh maps (1024 px twin: 1.34x a fixed encode against 1.29x).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_MMAP_THRESHOLD = -3  # mallopt parameters (glibc's malloc.h)
M_ARENA_MAX = -8
MALLOC_ARENAS = 2
MMAP_THRESHOLD = 4 << 20  # bytes
BLOCK_PIXELS = 1 << 21  # pixels per band in one block of frames read and quantised at once


def block_frames(frame_pixels: int, most: int) -> int:
    """Frames per block: ``most`` for small frames, one for frames of a megapixel and more."""
    return max(1, min(most, BLOCK_PIXELS // max(frame_pixels, 1) // 2))


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_free_memory() -> None:
    """Return the heap's free pages to the system (glibc); a no-op elsewhere."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=1)
def limit_heap_growth() -> None:
    """Cap glibc's heap arenas and fix its mmap threshold (once per process, before the
    encode starts its threads); a no-op elsewhere. ``MALLOC_ARENA_MAX`` and
    ``MALLOC_MMAP_THRESHOLD_`` in the environment still win."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return
    if "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
