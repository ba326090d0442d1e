"""Decode an encoded cube back into an ``xarray.Dataset``, whole or a window at a time.

Video streams keep their decoder open between time windows, so a cube read window after
window is decoded once; only the streams of the wanted variables are opened."""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from pipeline.codec import budget, jsonvalues
from pipeline.codec.codemap import CodeMap
from pipeline.codec.encoded import EncodedCube
from pipeline.codec.groupcoder import stream_size, untile
from pipeline.codec.manifest import (
    Manifest,
    StreamInfo,
    VariableInfo,
)
from pipeline.codec.masks import decode_masks
from pipeline.codec.netcdf import dataset_from_bytes
from pipeline.codec.pyav_engine import DecodeStats, FrameBounds, decode_frames
from pipeline.codec.settings import VideoSettings, n_planes
from pipeline.errors import CorruptStreamError, CubecastError, InvalidCubeError, ManifestError


def _restore(da: xr.DataArray, attrs: dict, encoding: dict) -> xr.DataArray:
    da.attrs = jsonvalues.dict_from_json(attrs)
    enc = jsonvalues.dict_from_json(encoding)
    if "dtype" in enc:
        enc["dtype"] = np.dtype(enc["dtype"])
    da.encoding = enc
    return da


def _time_window(m: Manifest, time: slice | None) -> tuple[int, int]:
    start, stop, step = (time or slice(None)).indices(m.n_frames)
    if step != 1:
        raise InvalidCubeError("time window must be a contiguous slice (step 1)")
    if stop <= start:
        raise InvalidCubeError(f"empty time window {time} for a cube of {m.n_frames} frames")
    return start, stop


def _most(n: int, pyav: bool) -> int:
    """A loose bound for streams of codecs this version does not know: PyAV's x265 pads to
    whole 64-px CTUs (at least two), the others to their minimum side (up to 66 px)."""
    if pyav:
        return max(128, n + (-n % 64))
    return max(66, n + (-n % 8))


def frame_bounds(m: Manifest, stream: StreamInfo) -> FrameBounds:
    """The frame sizes a stream of this manifest may have: at least its planes (tiled
    planes stacked, each rounded up to even rows), at most the frame its encoder writes
    (even sizes, the codec's minimum side and safe widths, PyAV x265's whole CTUs: the
    padding only grew between versions, so older streams fit too)."""
    h, w = m.frame_shape
    least_h = stream.tiles * (h + h % 2) if stream.tiles > 1 else h
    try:
        settings = VideoSettings(stream.codec, stream.pix_fmt, engine=stream.backend)
        most = stream_size((h + h % 2, w + w % 2), stream.tiles, settings)
    except (CubecastError, KeyError, ValueError):
        pyav = stream.backend == "pyav"
        most = (_most(least_h, pyav), _most(w, pyav))
    most = (max(most[0], least_h), max(most[1], w))
    return FrameBounds(stream.pix_fmt, (least_h, w), most)


def window_nbytes(m: Manifest, wanted: Sequence[str], n: int) -> int:
    """Bytes a window of ``n`` frames of the ``wanted`` variables allocates, as the
    manifest declares it: the streams' codes and masks, each output band (and the stacked
    variable), the KLT groups' work arrays, and every array the manifest's JSON holds
    (coordinates, attributes). Computed without allocating anything."""
    px = m.frame_shape[0] * m.frame_shape[1]
    total = 0
    for s in _needed_streams(m, wanted):
        planes = len(s.planes)
        if s.kind == "mask":  # bits of whole chunks, unpacked, and the window's booleans
            chunk_frames = min(m.n_frames, n + 2 * s.keyint)
            total += planes * px * (2 * chunk_frames + n)
        else:  # the window's codes and one decoded frame (padded, in the stream's format)
            bounds = frame_bounds(m, s)
            total += 2 * planes * px * n + 2 * n_planes(s.pix_fmt) * bounds.max_pixels
    for v in m.variables:
        if v.name in wanted:
            bands = len(v.channels)
            total += n * px * np.dtype(v.dtype).itemsize * (bands + (bands if v.band_dim else 0))
            if any(m.channel(c).words for c in v.channels):
                total += 2 * n * px * 8
    for t in m.transforms:
        if any(c in t.channels for v in m.variables if v.name in wanted for c in v.channels):
            total += 2 * n * px * 8 * max(len(t.channels), len(t.components))
    return total + manifest_arrays_nbytes(m)


def manifest_arrays_nbytes(m: Manifest) -> int:
    """Bytes of the arrays the manifest's JSON declares (coordinates, attributes)."""
    parts: list[object] = [m.attrs]
    parts += [(c.values, c.attrs, c.encoding) for c in m.coords.values()]
    parts += [(v.attrs, v.encoding, v.nodata) for v in m.variables]
    if m.aux:
        parts += [m.aux.attrs, m.aux.encodings]
    return jsonvalues.declared_nbytes(parts)


def check_budget(enc: EncodedCube, wanted: Sequence[str], n: int) -> None:
    m = enc.manifest
    h, w = m.frame_shape
    need = window_nbytes(m, wanted, n)
    budget.check(need, enc.source, f"decoding {n} frames of {h} x {w} px ({', '.join(wanted)})")


class _StreamFrames:
    """Consecutive frames of one stream from ``start`` on, decoded as they are asked for.

    Video streams keep their decoder open between windows (so a cube read window after
    window is decoded once), and read the stream from its file where the cube is on disk.
    Frames the stream does not store (nothing valid in them) come back as zeros: the mask
    marks every pixel of them invalid.
    """

    def __init__(
        self, enc: EncodedCube, stream: StreamInfo, start: int, stop: int, stats: DecodeStats
    ) -> None:
        m = enc.manifest
        self.stream, self.start, self.pos, self.stop = stream, start, start, stop
        self.shape = (len(stream.planes), *m.frame_shape)
        self.name = f"{enc.source}:{stream.file}"
        self.n_frames = m.n_frames
        if stream.kind == "mask":
            self._data = enc.read_file(stream.file)
            return
        self._stored = stream.stored_frames(m.n_frames)
        self._stored_set = set(self._stored)
        first = bisect.bisect_left(self._stored, start)
        last = bisect.bisect_left(self._stored, stop)
        source: bytes | Path | None = enc.file_path(stream.file)
        if source is None:
            source = enc.read_file(stream.file)
        self._frames: Iterator[tuple[int, np.ndarray]] = iter(())
        self._first: tuple[int, np.ndarray] | None = None
        if last > first:
            self._frames = decode_frames(
                source,
                n_planes(stream.pix_fmt),
                first,
                last,
                name=self.name,
                stats=stats,
                expect=frame_bounds(m, stream),
            )
            # the first frame now: a stream whose frames are not the manifest's size or
            # pixel format is refused before any window is allocated
            self._first = next(self._frames, None)

    def _next(self) -> tuple[int, np.ndarray] | None:
        if self._first is not None:
            got, self._first = self._first, None
            return got
        return next(self._frames, None)

    def take(self, n: int) -> np.ndarray:
        """The next n frames as (n, planes, H, W): bool for masks, uint16 codes otherwise."""
        lo, hi = self.pos, self.pos + n
        self.pos = hi
        if self.stream.kind == "mask":
            s = self.stream
            return decode_masks(
                self._data,
                s.chunk_offsets or [0],
                s.keyint,
                self.shape,
                lo,
                hi,
                name=self.name,
                n_frames=self.n_frames,
            )
        h, w = self.shape[1:]
        out = np.empty((n, *self.shape), dtype=np.uint16)
        for i in range(n):
            if lo + i not in self._stored_set:
                out[i] = 0
                continue
            got = self._next()
            if got is None:
                raise CorruptStreamError(
                    f"{self.name}: decoded {lo - self.start + i} frames of "
                    f"{self.stop - self.start} expected (truncated stream or manifest from "
                    "another cube)"
                )
            frame = untile(got[1], self.stream.tiles, h)
            out[i] = frame[: self.shape[0], :h, :w]
        return out

    def close(self) -> None:
        close = getattr(self._frames, "close", None) if self.stream.kind != "mask" else None
        if close is not None:
            close()


def _wanted(m: Manifest, variables: Sequence[str] | None) -> list[str]:
    image_names = [v.name for v in m.variables]
    aux_names = m.aux.variables if m.aux else []
    wanted = list(variables) if variables is not None else list(m.data_vars_order)
    unknown = [v for v in wanted if v not in image_names and v not in aux_names]
    if unknown:
        raise InvalidCubeError(
            f"cube {m.cube_id!r} has no variable {unknown[0]!r} (have: "
            f"{', '.join(m.data_vars_order)})"
        )
    return wanted


def _needed_streams(m: Manifest, wanted: Sequence[str]) -> list[StreamInfo]:
    names = [c for v in m.variables if v.name in wanted for c in v.channels]
    needed = {s for c in names for s in m.channel_streams(c)}
    needed |= {m.channel(c).mask_stream for c in names if m.channel(c).mask_stream}
    return [s for s in m.streams if s.name in needed]


def _assemble(
    enc: EncodedCube,
    wanted: Sequence[str],
    decoded: Mapping[str, np.ndarray],
    start: int,
    stop: int,
    aux: xr.Dataset | None,
) -> xr.Dataset:
    """The Dataset for frames [start, stop) from the decoded codes of its streams."""
    m = enc.manifest
    coords: dict[str, xr.Variable] = {}
    for name, ci in m.coords.items():
        values = jsonvalues.from_json(ci.values)
        var = xr.Variable(ci.dims, np.asarray(values, dtype=np.dtype(ci.dtype)))
        if m.time_dim in ci.dims:
            var = var.isel({m.time_dim: slice(start, stop)})
        coords[name] = var
    codemap = CodeMap.from_manifest(m)
    data_vars = {
        v.name: _image_variable(m, v, codemap, decoded) for v in m.variables if v.name in wanted
    }
    if m.aux and aux is not None:
        _add_aux(m, aux, wanted, slice(start, stop), data_vars, coords)
    for name, ci in m.coords.items():
        _restore(coords[name], ci.attrs, ci.encoding)
    order = [n for n in m.data_vars_order if n in data_vars]
    ds = xr.Dataset({n: data_vars[n] for n in order}, coords=coords)
    for n in order:  # Dataset() re-derives dims; keep attrs/encoding set above
        ds[n].attrs, ds[n].encoding = data_vars[n].attrs, data_vars[n].encoding
    ds.attrs = jsonvalues.dict_from_json(m.attrs)
    return ds


def _image_variable(
    m: Manifest, v: VariableInfo, codemap: CodeMap, decoded: Mapping[str, np.ndarray]
) -> xr.DataArray:
    """One image variable's values: codes mapped back, clipped to the valid range, invalid
    pixels set to nodata (or NaN) and infinities restored from their mask bits."""
    dtype = np.dtype(v.dtype)
    nodata = jsonvalues.from_json(v.nodata)
    bands = []
    for cname in v.channels:
        c = m.channel(cname)
        vals = codemap.values(cname, decoded, dtype)
        if v.role == "continuous" and c.valid_min is not None:
            lo, hi = c.valid_min, c.valid_max
            np.clip(vals, np.asarray(lo).astype(dtype), np.asarray(hi).astype(dtype), out=vals)
        if c.mask_stream is not None:
            invalid = decoded[c.mask_stream][:, c.mask_bit]
            vals[invalid] = np.nan if nodata is None and dtype.kind == "f" else nodata
            for bit, inf in ((c.posinf_bit, np.inf), (c.neginf_bit, -np.inf)):
                if bit is not None:
                    vals[decoded[c.mask_stream][:, bit]] = inf
        bands.append(vals)
    if v.band_dim is None:
        arr, canon = bands[0], [m.time_dim, m.y_dim, m.x_dim]
    else:
        arr, canon = np.stack(bands, axis=1), [m.time_dim, v.band_dim, m.y_dim, m.x_dim]
    da = xr.DataArray(arr, dims=canon).transpose(*v.dims)
    return _restore(da, v.attrs, v.encoding)


def _add_aux(
    m: Manifest,
    aux: xr.Dataset,
    wanted: Sequence[str],
    window: slice,
    data_vars: dict[str, xr.DataArray],
    coords: dict[str, xr.Variable],
) -> None:
    """The lossless side-car's variables (wanted data variables, and every coordinate)."""
    aux_ds = aux.isel({m.time_dim: window}) if m.time_dim in aux.dims else aux
    for n in m.aux.variables if m.aux else []:
        if n not in wanted and n in m.data_vars_order:
            continue
        da = _restore(
            aux_ds[n].variable.to_base_variable(),
            m.aux.attrs.get(n, {}) if m.aux else {},
            m.aux.encodings.get(n, {}) if m.aux else {},
        )
        if n in m.data_vars_order:
            data_vars[n] = xr.DataArray(da)
        else:
            coords[n] = da


def _aux_dataset(enc: EncodedCube, wanted: Sequence[str]) -> xr.Dataset | None:
    m = enc.manifest
    if not m.aux or not any(n in wanted or n not in m.data_vars_order for n in m.aux.variables):
        return None
    return dataset_from_bytes(enc.read_file(m.aux.file), f"{enc.source}:{m.aux.file}")


def iter_decode(
    enc: EncodedCube,
    variables: Sequence[str] | None = None,
    window: int = 16,
    time: slice | None = None,
    stats: DecodeStats | None = None,
) -> Iterator[xr.Dataset]:
    """Decode a cube as consecutive time windows of ``window`` frames.

    Memory holds one window, whatever the cube's length: the way to read a cube that
    does not fit in RAM. Each stream is decoded once, front to back (after one seek to
    the keyframe before ``time.start``).
    """
    if window < 1:
        raise InvalidCubeError(f"window must be at least 1 frame, got {window}")
    m = enc.manifest
    start, stop = _time_window(m, time)
    wanted = _wanted(m, variables)
    stats = stats if stats is not None else DecodeStats()
    readers: list[_StreamFrames] = []
    with _manifest_faults(enc):
        check_budget(enc, wanted, min(window, stop - start))
    try:
        with _manifest_faults(enc):
            for s in _needed_streams(m, wanted):
                readers.append(_StreamFrames(enc, s, start, stop, stats))
            aux = _aux_dataset(enc, wanted)
        for lo in range(start, stop, window):
            hi = min(lo + window, stop)
            with _manifest_faults(enc):
                decoded = {r.stream.name: r.take(hi - lo) for r in readers}
                ds = _assemble(enc, wanted, decoded, lo, hi, aux)
            yield ds
    finally:
        for r in readers:
            r.close()


@contextlib.contextmanager
def _manifest_faults(enc: EncodedCube) -> Iterator[None]:
    """A manifest that passed validation can still disagree with its streams or hold
    values numpy and xarray refuse (a plane index past the stream's planes, coordinate
    values of the wrong length, a dtype name that is not one): a one-line ManifestError,
    not a traceback. CubecastErrors pass through unchanged."""
    import zstandard

    try:
        yield
    except CubecastError:
        raise
    except (
        zstandard.ZstdError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        OverflowError,
        AttributeError,
        ZeroDivisionError,
        AssertionError,
        MemoryError,
    ) as exc:
        raise ManifestError(
            f"{enc.source}: manifest does not match its streams or holds invalid values "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def decode_cube(
    enc: EncodedCube,
    variables: Sequence[str] | None = None,
    time: slice | None = None,
    stats: DecodeStats | None = None,
) -> xr.Dataset:
    """Decode (some variables of) an encoded cube back into the Dataset that went in.

    Only the streams holding the requested variables (and their masks) are read.  ``time``
    is a frame-index slice; decoding seeks to the keyframe before its start. For cubes
    larger than memory, use :func:`iter_decode`.
    """
    m = enc.manifest
    start, stop = _time_window(m, time)
    return next(iter_decode(enc, variables, window=stop - start, time=time, stats=stats))
