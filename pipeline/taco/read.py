"""Reading samples back out of TACO shards, locally or over HTTP(S) range requests.

A shard is a stored (uncompressed) ZIP whose members are ``DATA/<sample>/<child>``.  The
central directory tells where each child's bytes are, so decoding RGB from a remote shard
fetches the directory and the RGB stream, nothing else.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import xarray as xr

from pipeline.codec.decode import decode_cube
from pipeline.codec.encoded import MANIFEST_FILE, MAX_MANIFEST_FILE, EncodedCube
from pipeline.codec.manifest import Manifest
from pipeline.confine import check_manifest_names
from pipeline.errors import CorruptStreamError, ManifestError, SourceError
from pipeline.sources.hub_auth import auth_headers
from pipeline.taco.cachedrange import CachedRangeFile
from pipeline.taco.http import HttpRangeFile
from pipeline.taco.pack import child_id
from pipeline.taco.staged import MANIFEST_DIGEST


class ShardStore:
    """Reads one sample's children out of an open shard ZIP.

    Shards store their members uncompressed; a compressed member (which could inflate to
    any size), one longer than its caller allows and a missing one are refused before any
    of its bytes are read."""

    def __init__(self, archive: zipfile.ZipFile, sample_id: str, source: str) -> None:
        self.archive = archive
        self.prefix = f"DATA/{sample_id}/"
        self.source = source

    def _info(self, filename: str) -> zipfile.ZipInfo:
        try:
            info = self.archive.getinfo(self.prefix + child_id(filename))
        except KeyError:
            raise CorruptStreamError(
                f"{self.source}: sample {self.prefix[5:-1]!r} has no child "
                f"{child_id(filename)!r} (missing stream)"
            ) from None
        if info.compress_type != zipfile.ZIP_STORED:
            raise CorruptStreamError(
                f"{self.source}: child {info.filename!r} is compressed (shards store their "
                "members uncompressed)"
            )
        return info

    def size(self, filename: str) -> int:
        """The child's length as the ZIP directory declares it (nothing read)."""
        return self._info(filename).file_size

    def read(self, filename: str, limit: int | None = None) -> bytes:
        info = self._info(filename)
        if limit is not None and info.file_size > limit:
            raise CorruptStreamError(
                f"{self.source}: child {info.filename!r} claims {info.file_size} bytes, "
                f"more than the {limit} it may have"
            )
        try:
            return self.archive.read(info)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise CorruptStreamError(f"{self.source}: cannot read {filename} ({exc})") from exc


ROWS = "METADATA/level0.parquet"  # the shard's sample rows (TACO's level-0 table)
MAX_ROWS = 256 << 20
DIGEST_COLUMN = MANIFEST_DIGEST
_digests: dict[int, tuple[zipfile.ZipFile, dict[str, str]]] = {}


def manifest_digests(archive: zipfile.ZipFile, shard: str) -> dict[str, str]:
    """Each sample's manifest SHA-256 as the shard's metadata rows record it (read once
    per open archive); empty for shards written before manifests had one."""
    held = _digests.get(id(archive))
    if held is not None and held[0] is archive:
        return held[1]
    try:
        info = archive.getinfo(ROWS)
    except KeyError:
        return {}
    if info.compress_type != zipfile.ZIP_STORED or info.file_size > MAX_ROWS:
        raise CorruptStreamError(f"{shard}: {ROWS} is compressed or over {MAX_ROWS >> 20} MiB")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(io.BytesIO(archive.read(info)))
        if DIGEST_COLUMN not in table.schema_arrow.names:
            digests: dict[str, str] = {}
        else:
            rows = table.read(columns=["id", DIGEST_COLUMN]).to_pylist()
            digests = {str(r["id"]): str(r[DIGEST_COLUMN]) for r in rows if r[DIGEST_COLUMN]}
    except (pa.ArrowException, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise CorruptStreamError(f"{shard}: the shard's metadata rows do not read ({exc})") from exc
    _digests.clear()  # one open archive at a time is the readers' pattern
    _digests[id(archive)] = (archive, digests)
    return digests


def _open_archive(shard: str | os.PathLike[str]) -> tuple[zipfile.ZipFile, Any]:
    s = str(shard)
    try:
        if s.startswith(("http://", "https://")):
            # the bounded transport, read in cached blocks: not one request per ZIP record
            fh: Any = CachedRangeFile(HttpRangeFile(s, headers=auth_headers(s)))
        else:
            if not Path(s).is_file():
                raise SourceError(f"{s}: no such shard")
            fh = open(s, "rb")  # noqa: SIM115  (closed by the caller with the archive)
        return zipfile.ZipFile(fh), fh
    except zipfile.BadZipFile as exc:
        raise CorruptStreamError(f"{s}: not a TACO shard, or truncated ({exc})") from exc


def sample_ids(archive: zipfile.ZipFile) -> list[str]:
    seen: dict[str, None] = {}
    for name in archive.namelist():
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "DATA" and parts[2] == child_id(MANIFEST_FILE):
            seen[parts[1]] = None
    return list(seen)


def _shards_of(source: Any) -> list[str]:
    """Shard paths/URLs from a path, URL, list, .tacocat folder or tacoreader dataset."""
    if isinstance(source, list | tuple):
        return [str(s) for s in source]
    table = None
    if hasattr(source, "data") and hasattr(source.data, "to_arrow"):  # tacoreader dataset
        table = source.data.to_arrow()
    elif hasattr(source, "column_names") and hasattr(source, "column"):  # an arrow table
        table = source
        if "internal:gdal_vsi" not in source.column_names:
            raise SourceError(
                f"a table with columns {', '.join(source.column_names)} names no shards: "
                "pass the tacoreader dataset (or the .tacocat / shard path) as the source and "
                "a sample id from the table as the sample"
            )
    if table is not None:
        paths = []
        for vsi in table.column("internal:gdal_vsi").to_pylist():
            path = vsi.split(",", 1)[1] if vsi.startswith("/vsisubfile/") else vsi
            for prefix in ("/vsicurl/",):
                path = path.removeprefix(prefix)
            paths.append(path)
        return list(dict.fromkeys(paths))
    s = str(source)
    p = Path(s)
    if p.is_dir():
        zips = sorted(p.glob("*.tacozip")) or sorted(p.parent.glob("*.tacozip"))
        if not zips:
            raise SourceError(f"{s}: no .tacozip shards in or beside this folder")
        return [str(z) for z in zips]
    return [s]


def open_sample(
    source: Any,
    sample: str | int,
    variables: Sequence[str] | None = None,
    time: slice | None = None,
) -> xr.Dataset:
    """Decode one sample of a shard (or shard list / .tacocat / tacoreader dataset).

    ``sample`` is a sample id, or a row number over all shards in order. Only the manifest,
    the streams holding ``variables`` (default: all) and their masks are read; ``time`` is
    a frame-index slice (``slice(100, 108)``): decoding starts at the keyframe before it,
    so a window costs at most one GOP more than its own frames (a recipe's
    ``access = "windows"`` keeps GOPs at 16 frames; ``"bands"`` gives each band a stream
    it can be read from alone).
    """
    idx = sample if isinstance(sample, int) else None
    for shard in _shards_of(source):
        archive, fh = _open_archive(shard)
        with archive, fh:
            ids = sample_ids(archive)
            if idx is not None:
                if idx >= len(ids):
                    idx -= len(ids)
                    continue
                sid = ids[idx]
            elif sample in ids:
                sid = str(sample)
            else:
                continue
            return _decode_sample(archive, sid, shard, variables, time)
    raise SourceError(f"sample {sample!r} not found in {source}")


def sample_encoded(archive: zipfile.ZipFile, sid: str, shard: str) -> EncodedCube:
    """One sample of an open shard as an encoded cube; its streams are read on demand."""
    store = ShardStore(archive, sid, shard)
    raw = store.read(MANIFEST_FILE, limit=MAX_MANIFEST_FILE)
    manifest = Manifest.from_json(raw, source=f"{shard}:{sid}")
    check_manifest_names(manifest, f"{shard}:{sid}")
    if manifest.cube_id != sid:
        raise ManifestError(
            f"{shard}: sample {sid!r} carries the manifest of cube {manifest.cube_id!r}"
        )
    expected = manifest_digests(archive, shard).get(sid)
    if expected is not None and hashlib.sha256(raw).hexdigest() != expected:
        raise ManifestError(
            f"{shard}:{sid}: manifest does not match the SHA-256 the shard's metadata row "
            "records (corrupt shard)"
        )
    return EncodedCube(manifest, store, source=f"{shard}:{sid}")


def _decode_sample(
    archive: zipfile.ZipFile,
    sid: str,
    shard: str,
    variables: Sequence[str] | None,
    time: slice | None = None,
) -> xr.Dataset:
    return decode_cube(sample_encoded(archive, sid, shard), variables, time=time)


def iter_samples(
    source: Any, ids: Sequence[str] | None = None, variables: Sequence[str] | None = None
) -> Iterator[tuple[str, xr.Dataset]]:
    """Decode samples one at a time (memory holds one cube) for training loops."""
    wanted = set(ids) if ids is not None else None
    for shard in _shards_of(source):
        archive, fh = _open_archive(shard)
        with archive, fh:
            for sid in sample_ids(archive):
                if wanted is None or sid in wanted:
                    yield sid, _decode_sample(archive, sid, shard, variables)
