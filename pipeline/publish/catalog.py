"""The ``.tacocat`` of a dataset whose shards are not on this machine.

tacotoolbox consolidates shards by reading, from each ``.tacozip``, its 157-byte TACO header
and the metadata entries that header points to (one parquet table per level and the
``COLLECTION.json``): a few kB at the end of each shard, never the samples. A *stub* is a
sparse file of the shard's length that holds exactly those bytes, so the unmodified
``tacotoolbox.create_tacocat`` over stubs writes the same ``.tacocat`` it would write over
the full shards, while a stub occupies a few kB of disk. Stubs of new shards are cut from
the local shard; those of shards already published are read from the target with range
requests, and kept in the work folder for the next batch.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from pipeline.errors import PublishError
from pipeline.publish.remote import Remote

HEADER_BYTES = 157  # a TACO header: magic, version, and up to 7 (offset, length) entries


def _regions(header: bytes, size: int, where: str) -> list[tuple[int, int]]:
    import tacozip

    try:
        entries = [(int(o), int(n)) for o, n in tacozip.read_header(header)]
    except Exception as exc:  # tacozip raises its own types for a bad header
        raise PublishError(f"{where}: not a TACO shard ({exc})") from None
    for off, n in entries:
        if off < HEADER_BYTES or off + n > size:
            raise PublishError(f"{where}: TACO header points outside the file")
    return entries


def _write_stub(dest: Path, size: int, parts: list[tuple[int, bytes]]) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with open(part, "wb") as f:
        for off, data in parts:
            f.seek(off)
            f.write(data)
        f.truncate(size)
    os.replace(part, dest)
    return dest


def stub_from_shard(shard: Path, dest: Path) -> Path:
    """The stub of a local shard."""
    size = shard.stat().st_size
    with open(shard, "rb") as f:
        header = f.read(HEADER_BYTES)
        parts = [(0, header)]
        for off, n in _regions(header, size, str(shard)):
            f.seek(off)
            parts.append((off, f.read(n)))
    return _write_stub(dest, size, parts)


def stub_from_remote(remote: Remote, name: str, size: int, dest: Path) -> Path:
    """The stub of a published shard, from range reads of its header and metadata only."""
    where = f"{remote.target}/{name}"
    header = remote.read_range(name, 0, HEADER_BYTES)
    parts = [(0, header)]
    regions = sorted(_regions(header, size, where))
    if regions:  # the metadata entries lie together at the end: one read for all of them
        lo, hi = regions[0][0], max(o + n for o, n in regions)
        block = remote.read_range(name, lo, hi)
        parts += [(o, block[o - lo : o - lo + n]) for o, n in regions]
    return _write_stub(dest, size, parts)


def stub_ok(stub: Path, size: int) -> bool:
    return stub.is_file() and stub.stat().st_size == size


def write_tacocat(stubs: list[Path], folder: Path) -> Path:
    """``folder/.tacocat/`` over the shards whose stubs are given, in that order (written in a
    temporary folder first: tacotoolbox refuses an existing one)."""
    import tacotoolbox

    if not stubs:
        raise PublishError(f"{folder}: no shards to index")
    tacotoolbox.verbose(False)
    tmp = Path(tempfile.mkdtemp(prefix=".tacocat-", dir=folder))
    try:
        tacotoolbox.create_tacocat([str(s) for s in stubs], output=tmp)
        dest = folder / ".tacocat"
        shutil.rmtree(dest, ignore_errors=True)
        (tmp / ".tacocat").rename(dest)
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_tacocat(folder: Path, shards: list[Path]) -> None:
    """``folder/.tacocat`` describes exactly ``shards``: every shard it lists is there and
    holds the samples it lists, within its length, and every shard is listed. A catalogue
    naming a deleted shard would send readers to a file that is not published."""
    import pyarrow.parquet as pq

    from pipeline.errors import VerificationError
    from pipeline.taco.read import sample_ids

    level0 = folder / ".tacocat" / "level0.parquet"
    if not level0.is_file():
        raise VerificationError(
            f"{folder}: no .tacocat/level0.parquet beside its shards (readers load the dataset "
            "through it); pack again"
        )
    where = f"{folder / '.tacocat'}"
    try:
        rows = pq.read_table(
            level0, columns=["id", "internal:source_file", "internal:offset", "internal:size"]
        ).to_pylist()
    except Exception as exc:  # pyarrow raises its own types for a bad file
        raise VerificationError(f"{where}: not a readable catalogue ({exc})") from None
    listed: dict[str, list[dict]] = {}
    for row in rows:
        listed.setdefault(str(row["internal:source_file"]), []).append(row)
    present = {p.name: p for p in shards}
    missing = sorted(set(listed) - set(present))
    if missing:
        raise VerificationError(
            f"{where}: lists {len(missing)} shard(s) that are not in {folder}: "
            f"{', '.join(missing[:3])}; pack again"
        )
    unlisted = sorted(set(present) - set(listed))
    if unlisted:
        raise VerificationError(f"{where}: does not list {', '.join(unlisted[:3])}; pack again")
    for name, entries in listed.items():
        path = present[name]
        size = path.stat().st_size
        try:
            with zipfile.ZipFile(path) as archive:
                held = sample_ids(archive)
        except (zipfile.BadZipFile, OSError) as exc:
            raise VerificationError(f"{path}: not a readable shard ({exc})") from None
        if sorted(held) != sorted(str(r["id"]) for r in entries):
            raise VerificationError(
                f"{where}: lists other samples for {name} than the shard holds; pack again"
            )
        for r in entries:
            if int(r["internal:offset"]) + int(r["internal:size"]) > size:
                raise VerificationError(
                    f"{where}: sample {r['id']!r} lies past the end of {name} "
                    f"({size:,} bytes): the shard is truncated"
                )
