"""Reading samples back out of TACO shards, locally or over HTTP(S) range requests.

A shard is a stored (uncompressed) ZIP whose members are ``DATA/<sample>/<child>``.  The
central directory tells where each child's bytes are, so decoding RGB from a remote shard
fetches the directory and the RGB stream, nothing else.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import requests
import xarray as xr

from pipeline.codec.decode import decode_cube
from pipeline.codec.encoded import MANIFEST_FILE, MAX_MANIFEST_FILE, EncodedCube
from pipeline.codec.manifest import Manifest
from pipeline.confine import check_manifest_names
from pipeline.errors import CorruptStreamError, ManifestError, SourceError
from pipeline.sources.download import (
    TRANSPORT,
    Deadline,
    Limits,
    auth_headers,
    content_range,
    env_size,
    int_header,
    read_body,
    watchdog,
    watched_session,
)
from pipeline.taco.pack import child_id
from pipeline.taco.staged import MANIFEST_DIGEST

log = logging.getLogger(__name__)


class HttpRangeFile(io.RawIOBase):
    """Seekable read-only file over HTTP Range requests; ``ranges`` records what was fetched.

    Each read asks for its bytes only and reads at most that many (a longer answer is
    refused), within a deadline of ``limits`` (:class:`~pipeline.sources.download.Limits`:
    its floor plus the bytes at its minimum rate).

    A server that ignores Range (it answers ``200`` with the whole shard) is read ONCE: the
    body, bounded by the size HEAD and the answer declare and by ``fallback_max`` (default
    ``CUBECAST_RANGE_FALLBACK_MAX``, else 2 GiB), is spooled to an anonymous temporary file,
    with a warning, and every later read is served from it; ``full_downloads`` counts such
    bodies (0 or 1). A shard larger than ``fallback_max`` on such a server is refused with
    one line (download it instead, or raise the cap).
    """

    FALLBACK_MAX = 2 << 30

    def __init__(
        self,
        url: str,
        session: requests.Session | None = None,
        headers: dict[str, str] | None = None,
        *,
        limits: Limits | None = None,
        fallback_max: int | None = None,
    ) -> None:
        self.url = url
        self.session = session or watched_session()
        self.headers = {"Accept-Encoding": "identity", **(headers or {})}
        self.limits = limits or Limits.from_env()
        self.fallback_max = (
            fallback_max
            if fallback_max is not None
            else env_size("CUBECAST_RANGE_FALLBACK_MAX", self.FALLBACK_MAX)
        )
        self.pos = 0
        self.ranges: list[tuple[int, int]] = []
        self.full_downloads = 0
        self._whole: Any = None  # the spooled body when the server ignores Range
        self._last = b""  # the bytes of the latest range request
        clock = Deadline(url, self.limits)
        try:
            with watchdog(clock):
                r = self.session.head(
                    url,
                    allow_redirects=True,
                    headers=self.headers,
                    timeout=min(30.0, clock.check()),
                )
            clock.check()
        except TRANSPORT as exc:
            raise SourceError(f"{url}: unreachable ({exc.__class__.__name__})") from exc
        if r.status_code >= 400:
            raise SourceError(f"{url}: HTTP {r.status_code}")
        size = int_header(r, "Content-Length")
        if size is None:
            raise SourceError(f"{url}: the server gives no Content-Length for the shard")
        self.size = size

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

    def close(self) -> None:
        if self._whole is not None:
            self._whole.close()
            self._whole = None
        super().close()

    def read(self, n: int | None = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.pos + n, self.size)
        if end <= self.pos:
            return b""
        if self._whole is None:
            self._fetch(self.pos, end)
        if self._whole is not None:  # the server ignored Range: served from the spooled copy
            self._whole.seek(self.pos)
            data = self._whole.read(end - self.pos)
        else:
            data = self._last
            self._last = b""
        self.ranges.append((self.pos, self.pos + len(data)))
        self.pos += len(data)
        return data

    def _fetch(self, start: int, end: int) -> None:
        """``bytes start..end-1`` into ``_last``, or the whole body into ``_whole``."""
        what = f"range {start}-{end - 1}"
        clock = Deadline(self.url, self.limits)
        clock.declared = end - start
        headers = {**self.headers, "Range": f"bytes={start}-{end - 1}"}
        try:
            timeout = min(60.0, clock.check())
            with (
                watchdog(clock),
                self.session.get(self.url, headers=headers, stream=True, timeout=timeout) as r,
            ):
                clock.check()
                if r.status_code == 200:
                    self._spool(r, clock)
                    return
                if r.status_code != 206:
                    raise SourceError(f"{self.url}: HTTP {r.status_code} for {what}")
                cr = content_range(r)
                if cr is None or cr[0] != start or cr[1] > end:
                    raise SourceError(
                        f"{self.url}: asked for {what}, the server sent "
                        f"{r.headers.get('Content-Range')!r}"
                    )
                buf = io.BytesIO()
                read_body(
                    r,
                    buf,
                    bound=end - start,
                    over=lambda k: SourceError(
                        f"{self.url}: more than the {end - start:,} bytes asked for {what}"
                    ),
                    clock=clock,
                    timeout=60.0,
                )
                self._last = buf.getvalue()
        except TRANSPORT as exc:
            raise SourceError(f"{self.url}: read failed ({exc.__class__.__name__})") from exc

    def _spool(self, r: requests.Response, clock: Deadline) -> None:
        """The server ignored Range: keep its whole body, once, within bounds."""
        declared = int_header(r, "Content-Length")
        if declared is not None and declared != self.size:
            raise SourceError(
                f"{self.url}: ignores Range and sends {declared:,} bytes, not the "
                f"{self.size:,} its HEAD declared"
            )
        if self.size > self.fallback_max:
            raise SourceError(
                f"{self.url}: the server ignores Range requests and the shard is "
                f"{self.size:,} bytes, over the {self.fallback_max:,} read whole "
                "(CUBECAST_RANGE_FALLBACK_MAX); download the shard instead"
            )
        log.warning("%s: the server ignores Range requests; reading the shard once", self.url)
        clock.declared = self.size
        spool = tempfile.TemporaryFile()  # noqa: SIM115  (kept open, closed in close())
        try:
            got = read_body(
                r,
                spool,
                bound=self.size,
                over=lambda k: SourceError(
                    f"{self.url}: ignores Range and sends more than the {self.size:,} bytes "
                    "its HEAD declared"
                ),
                clock=clock,
                timeout=60.0,
            )
            if got != self.size:
                raise SourceError(
                    f"{self.url}: ignores Range and sent {got:,} of its {self.size:,} bytes"
                )
        except BaseException:
            spool.close()
            raise
        self.full_downloads += 1
        self._whole = spool

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


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
            fh: Any = HttpRangeFile(s, headers=auth_headers(s))
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
    if hasattr(source, "data") and hasattr(source.data, "to_arrow"):  # tacoreader dataset
        table = source.data.to_arrow()
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
    source: Any, sample: str | int, variables: Sequence[str] | None = None
) -> xr.Dataset:
    """Decode one sample of a shard (or shard list / .tacocat / tacoreader dataset).

    ``sample`` is a sample id, or a row number over all shards in order.  Only the manifest,
    the streams holding ``variables`` and their masks are read.
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
            return _decode_sample(archive, sid, shard, variables)
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
    archive: zipfile.ZipFile, sid: str, shard: str, variables: Sequence[str] | None
) -> xr.Dataset:
    return decode_cube(sample_encoded(archive, sid, shard), variables)


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
