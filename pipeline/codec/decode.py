"""Decode an encoded cube back into an ``xarray.Dataset``, whole or a window at a time.

Video streams keep their decoder open between time windows, so a cube read window after
window is decoded once; only the streams of the wanted variables are opened."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import xarray as xr

from pipeline.codec import jsonvalues
from pipeline.codec.codemap import CodeMap
from pipeline.codec.encoded import EncodedCube
from pipeline.codec.manifest import Manifest
from pipeline.codec.netcdf import dataset_from_bytes
from pipeline.codec.pyav_engine import DecodeStats, decode_threads
from pipeline.codec.segments import Segments, split_frames
from pipeline.codec.sizes import check_budget, needed_streams
from pipeline.codec.streamchunks import CHUNK, StreamChunks
from pipeline.codec.windowarrays import WindowArrays
from pipeline.errors import CubecastError, InvalidCubeError, ManifestError


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


def _assemble(
    enc: EncodedCube,
    wanted: Sequence[str],
    arrays: WindowArrays,
    start: int,
    stop: int,
    aux: xr.Dataset | None,
) -> xr.Dataset:
    """The Dataset for frames [start, stop) from their image variables' filled arrays."""
    m = enc.manifest
    coords: dict[str, xr.Variable] = {}
    for name, ci in m.coords.items():
        values = jsonvalues.from_json(ci.values)
        var = xr.Variable(ci.dims, np.asarray(values, dtype=np.dtype(ci.dtype)))
        if m.time_dim in ci.dims:
            var = var.isel({m.time_dim: slice(start, stop)})
        coords[name] = var
    data_vars = {
        name: _restore(xr.DataArray(arr, dims=dims).transpose(*v.dims), v.attrs, v.encoding)
        for name, (v, arr, dims) in arrays.canonical().items()
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
    with _manifest_faults(enc):
        check_budget(enc, wanted, min(window, stop - start))
    windows = [(lo, min(lo + window, stop)) for lo in range(start, stop, window)]
    spans = [(c, min(c + CHUNK, hi)) for lo, hi in windows for c in range(lo, hi, CHUNK)]
    streams: StreamChunks | None = None
    try:
        with _manifest_faults(enc):
            streams = StreamChunks(enc, needed_streams(m, wanted), start, stop, stats)
            aux = _aux_dataset(enc, wanted)
            codemap = CodeMap.from_manifest(m)
        chunks = streams.chunks(spans)
        for lo, hi in windows:
            with _manifest_faults(enc):
                values = WindowArrays(m, wanted, hi - lo, lo)
                for c in range(lo, hi, CHUNK):
                    values.fill(codemap, next(chunks), c - lo, min(c + CHUNK, hi) - lo)
                ds = _assemble(enc, wanted, values, lo, hi, aux)
            yield ds
    finally:
        if streams is not None:
            streams.close()


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
    is a frame-index slice; decoding seeks to the keyframe before its start. A window of
    several GOPs decodes as segments side by side (:mod:`pipeline.codec.segments`). For
    cubes larger than memory, use :func:`iter_decode`.
    """
    m = enc.manifest
    start, stop = _time_window(m, time)
    wanted = _wanted(m, variables)
    stats = stats if stats is not None else DecodeStats()
    with _manifest_faults(enc):
        check_budget(enc, wanted, stop - start)
    segments: Segments | None = None
    try:
        with _manifest_faults(enc):
            needed = needed_streams(m, wanted)
            bounds = split_frames(m, needed, start, stop, decode_threads())
            segments = Segments(enc, needed, bounds, stats)  # first frames checked here
            aux = _aux_dataset(enc, wanted)
            codemap = CodeMap.from_manifest(m)
            values = WindowArrays(m, wanted, stop - start, start)
            segments.fill(values, codemap, start)
            return _assemble(enc, wanted, values, start, stop, aux)
    finally:
        if segments is not None:
            segments.close()
