"""A remote file as a seekable, read-only file: what a zip reader needs of a remote shard."""

from __future__ import annotations

import io
import os
from typing import Any


class RangeFile(io.RawIOBase):
    """A file of known ``size`` whose bytes come from :meth:`read_range` (a subclass says
    how: HTTP Range requests, a publish target's ranged reads)."""

    size = 0
    pos = 0

    def read_range(self, start: int, end: int) -> bytes:
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = max(base + offset, 0)
        return self.pos

    def read(self, n: int | None = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.pos + n, self.size)
        if end <= self.pos:
            return b""
        data = self.read_range(self.pos, end)
        self.pos += len(data)
        return data

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)
