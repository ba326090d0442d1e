"""Disk use of a work folder: sizes like ``10GB``, bytes really used, and a sampler that
records the peak while a run goes on."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

from pipeline.errors import CubecastError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str | int | None, what: str = "size") -> int | None:
    """``"10GB"`` -> 10_000_000_000 (KB/MB/GB/TB are powers of 10, KiB/MiB/GiB of 2)."""
    if text is None or text == "":
        return None
    if isinstance(text, int):
        if text <= 0:
            raise CubecastError(f"{what} {text!r}: must be positive")
        return text
    m = _SIZE.match(str(text))
    unit = m[2].upper() if m else ""
    if not m or unit not in _UNITS or float(m[1]) <= 0:
        raise CubecastError(f"{what} {text!r}: expected a positive size like '500MB' or '10GB'")
    return int(float(m[1]) * _UNITS[unit])


def used_bytes(root: str | os.PathLike[str]) -> int:
    """Bytes the files under ``root`` occupy on disk (allocated blocks: a sparse file counts
    what it holds, not its length). Files that vanish while walking are skipped."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_blocks * 512
    return total


def folder_bytes(root: str | os.PathLike[str]) -> int:
    """Apparent size (sum of file lengths) of the files under ``root``."""
    p = Path(root)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0


class DiskSampler:
    """Samples :func:`used_bytes` of a folder in a background thread; ``peak`` is the most
    seen. Use as a context manager around the work being measured."""

    def __init__(self, root: str | os.PathLike[str], interval: float = 0.05) -> None:
        self.root = Path(root)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        used = used_bytes(self.root) if self.root.exists() else 0
        self.peak = max(self.peak, used)
        self.samples += 1
        return used

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
