"""Encoder threads: every core where one cube has the machine, a share of them where cubes
encode side by side (process-pool or Dask workers on one host), so that N workers on N cores
run N single-threaded encoders instead of N encoders each fighting for every core."""

from __future__ import annotations

import os

from pipeline.codec.pyav_engine import usable_cores
from pipeline.errors import CubecastError

ENCODE_THREADS_ENV = "CUBECAST_ENCODE_THREADS"


def encode_threads(requested: int = 0) -> int:
    """``requested`` where set, else ``CUBECAST_ENCODE_THREADS``, else 0: each encoder's own
    choice (x265's pool, libaom's threads: every core)."""
    if requested:
        return requested
    text = os.environ.get(ENCODE_THREADS_ENV, "").strip()
    if not text:
        return 0
    if not text.isdigit():
        raise CubecastError(f"{ENCODE_THREADS_ENV}={text!r}: must be a whole number")
    return int(text)


def shared_threads(concurrent: int, cores: int | None = None) -> int:
    """Threads per encoder with ``concurrent`` cubes encoding at once on this host: 0 (the
    encoders' own choice) for one cube or when ``CUBECAST_ENCODE_THREADS`` decides, else the
    cores split between them, at least one each."""
    if concurrent <= 1 or encode_threads():
        return 0
    return max(1, (cores or usable_cores()) // concurrent)
