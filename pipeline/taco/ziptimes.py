"""Stable ZIP entry times: a re-pack of the same samples is the same file."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

from pipeline.errors import CubecastError

ZIP_EPOCH = (0, (1 << 5) | 1)  # DOS time 00:00:00, date 1980-01-01: the format's first day


def fix_zip_times(path: str | Path) -> None:
    """Set every entry's modification time to 1980-01-01 in place, in the local headers
    and the central directory: tacotoolbox stamps the time of writing, which made every
    re-pack of the same samples a different file (and a full re-upload). Sizes and
    offsets are unchanged, so TACO's own offset index stays right."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        central = zf.start_dir
    stamp = struct.pack("<HH", *ZIP_EPOCH)
    with open(path, "r+b") as f:
        for info in infos:
            f.seek(info.header_offset)
            if f.read(4) != b"PK\x03\x04":
                raise CubecastError(f"{path}: unexpected ZIP layout at {info.filename}")
            f.seek(info.header_offset + 10)
            f.write(stamp)
        pos = central
        for _ in infos:
            f.seek(pos)
            head = f.read(46)
            if head[:4] != b"PK\x01\x02":
                raise CubecastError(f"{path}: unexpected ZIP central directory")
            f.seek(pos + 12)
            f.write(stamp)
            n, m, k = struct.unpack("<HHH", head[28:34])
            pos += 46 + n + m + k
