"""Encode an xarray cube into video streams plus a manifest, and decode it back.

The pipeline is streaming: frames are read from the (possibly lazy) Dataset a block at a time,
quantised, gap-filled and handed to the encoder, so memory holds a few frames per stream.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from pipeline import jsonvalues
from pipeline.cube import Channel, ChannelStats, CubeLayout, analyse, channel_array, channel_stats
from pipeline.cube import valid_mask as _valid_mask
from pipeline.encoded import EncodedCube, MemoryStore, sha256
from pipeline.errors import CorruptStreamError, InvalidCubeError
from pipeline.manifest import (
    AuxInfo,
    ChannelInfo,
    CoordInfo,
    Manifest,
    StreamInfo,
    VariableInfo,
)
from pipeline.maskcodec import decode_masks, encode_masks
from pipeline.netcdf import dataset_from_bytes, dataset_to_bytes, packing_encoding
from pipeline.planning import LOSSLESS_BITS, LOSSY_BITS, EncodeOptions, StreamPlan, plan_streams
from pipeline.quantize import Quantiser, TemporalFiller, pad_even
from pipeline.ratecontrol import search_crf
from pipeline.video import DecodeStats, VideoSettings, decode_frames, encode_frames, n_planes

READ_BLOCK = 16
AUX_FILE = "aux.nc"


# ---------------------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------------------
@dataclass
class _Context:
    ds: xr.Dataset
    layout: CubeLayout
    stats: dict[str, ChannelStats]
    quantisers: dict[str, Quantiser]
    pad: tuple[int, int]
    progress: bool


def _read_block(ctx: _Context, ch: Channel, indices: Sequence[int]) -> np.ndarray:
    da = channel_array(ctx.ds, ctx.layout, ch)
    lo, hi = indices[0], indices[-1] + 1
    if hi - lo == len(indices):
        return np.asarray(da.isel({ctx.layout.time_dim: slice(lo, hi)}).values)
    return np.asarray(da.isel({ctx.layout.time_dim: list(indices)}).values)


def _blocks(indices: Sequence[int]) -> Iterator[Sequence[int]]:
    for i in range(0, len(indices), READ_BLOCK):
        yield indices[i : i + READ_BLOCK]


X265_CTU = 64


def stream_pad(ctx: _Context, plan: StreamPlan) -> tuple[int, int]:
    """Rows/cols of edge padding for a stream.

    x265 frames are padded to whole 64-px CTUs: the libx265 in PyAV's wheels encodes noisy
    content in partial CTUs non-deterministically, with errors of half the code range and
    at times heap corruption (seen at 32, 48 and 96 px; never at multiples of 64).
    Edge-replicated padding costs almost no bits. FFV1 only needs even sizes.
    """
    h, w = ctx.ds.sizes[ctx.layout.y_dim], ctx.ds.sizes[ctx.layout.x_dim]
    if plan.settings.codec == "libx265":
        return (-h % X265_CTU, -w % X265_CTU)
    return ctx.pad


def _plan_frames(ctx: _Context, plan: StreamPlan, indices: Sequence[int]) -> Iterator[np.ndarray]:
    """Frames (planes, H, W) for one stream over the given time indices."""
    h, w = ctx.ds.sizes[ctx.layout.y_dim], ctx.ds.sizes[ctx.layout.x_dim]
    pad = stream_pad(ctx, plan)
    if plan.kind == "mask":
        for block in _blocks(indices):
            invalid = np.empty((len(block), len(plan.mask_of), h, w), dtype=bool)
            for b, ch in enumerate(plan.mask_of):
                vals = _read_block(ctx, ch, block)
                invalid[:, b] = ~_valid_mask(vals, ctx.layout.nodata[ch.variable])
            yield from invalid
        return
    fillers = {
        ch.name: TemporalFiller((h, w), ctx.quantisers[ch.name].max_code) for ch in plan.channels
    }
    for block in _blocks(indices):
        planes = np.empty((len(block), n_planes(plan.settings.pix_fmt), h, w), dtype=np.uint16)
        for p, ch in enumerate(plan.channels):
            q = ctx.quantisers[ch.name]
            vals = _read_block(ctx, ch, block)
            if plan.kind == "categorical":
                planes[:, p] = (vals.astype(np.int64) - int(q.offset)).astype(np.uint16)
                continue
            valid = _valid_mask(vals, ctx.layout.nodata[ch.variable])
            codes = q.to_codes(np.where(valid, vals, 0))
            for i in range(len(block)):
                planes[i, p] = q.codes_to_uint(fillers[ch.name].fill(codes[i], valid[i]))
        for p in range(len(plan.channels), planes.shape[1]):
            planes[:, p] = 0
        for frame in planes:
            yield pad_even(frame, pad)


def _stream_errors(
    ctx: _Context, plan: StreamPlan, data: bytes, indices: Sequence[int]
) -> dict[str, float]:
    """PSNR per channel of an encoded stream against the source, over valid pixels."""
    h, w = ctx.ds.sizes[ctx.layout.y_dim], ctx.ds.sizes[ctx.layout.x_dim]
    sse = {ch.name: 0.0 for ch in plan.channels}
    count = {ch.name: 0 for ch in plan.channels}
    decoded = decode_frames(data, n_planes(plan.settings.pix_fmt), name=plan.name)
    for block in _blocks(indices):
        frames = [next(decoded)[1][:, :h, :w] for _ in block]
        for p, ch in enumerate(plan.channels):
            vals = _read_block(ctx, ch, block)
            valid = _valid_mask(vals, ctx.layout.nodata[ch.variable])
            dtype = ctx.ds[ch.variable].dtype
            rec = ctx.quantisers[ch.name].from_codes(np.stack([f[p] for f in frames]), dtype)
            diff = rec[valid].astype(np.float64) - vals[valid].astype(np.float64)
            sse[ch.name] += float(np.dot(diff, diff))
            count[ch.name] += int(valid.sum())
    out = {}
    for ch in plan.channels:
        st = ctx.stats[ch.name]
        out[ch.name] = psnr_from_mse(sse[ch.name] / max(count[ch.name], 1), st.vmax - st.vmin)
    return out


def psnr_from_mse(mse: float, data_range: float) -> float:
    if mse <= 0:
        return math.inf
    return 20 * math.log10((data_range if data_range > 0 else 1.0) / math.sqrt(mse))


def _sample_indices(n_frames: int, frame_pixels: int, budget: int = 2_000_000) -> list[int]:
    """Contiguous runs spread over the cube: enough to predict quality, far cheaper than all."""
    total = max(budget // max(frame_pixels, 1), 8)
    if total >= n_frames:
        return list(range(n_frames))
    runs = 4
    run = max(total // runs, 2)
    starts = np.linspace(0, n_frames - run, runs).astype(int)
    return sorted({i for s in starts for i in range(s, s + run)})


def _encode_plan(ctx: _Context, plan: StreamPlan) -> tuple[bytes, VideoSettings, list[int] | None]:
    n_t = ctx.ds.sizes[ctx.layout.time_dim]
    pad = stream_pad(ctx, plan)
    h, w = ctx.ds.sizes[ctx.layout.y_dim] + pad[0], ctx.ds.sizes[ctx.layout.x_dim] + pad[1]
    all_idx = list(range(n_t))
    if plan.kind == "mask":
        data, offsets = encode_masks(_plan_frames(ctx, plan, all_idx), plan.settings.keyint)
        return data, plan.settings, offsets

    def encode(settings: VideoSettings, indices: Sequence[int], desc: str) -> bytes:
        frames: Iterable[np.ndarray] = _plan_frames(ctx, plan, indices)
        if ctx.progress:
            frames = tqdm(frames, total=len(indices), desc=desc, unit="frame", leave=False)
        return encode_frames(frames, h, w, settings)

    if plan.psnr_target is None:
        return encode(plan.settings, all_idx, plan.name), plan.settings, None

    sample = _sample_indices(n_t, h * w * len(plan.channels))

    def quality(crf: float, indices: Sequence[int]) -> tuple[float, bytes]:
        s = replace(plan.settings, crf=crf)
        data = encode(s, indices, f"{plan.name} crf={crf:g}")
        return min(_stream_errors(ctx, plan, data, indices).values()), data

    crf = search_crf(lambda c: quality(c, sample)[0], plan.psnr_target, start=plan.settings.crf)
    while crf is not None:
        q, data = quality(crf, all_idx)
        if q >= plan.psnr_target:
            return data, replace(plan.settings, crf=crf), None
        crf = crf - 2 if crf >= 2 else None
    lossless = replace(plan.settings, lossless=True, crf=None)
    return encode(lossless, all_idx, f"{plan.name} lossless"), lossless, None


def _coord_info(da: xr.DataArray) -> CoordInfo:
    return CoordInfo(
        dims=[str(d) for d in da.dims],
        dtype=str(da.dtype),
        values=jsonvalues.to_json(np.asarray(da.values)),
        attrs=jsonvalues.dict_to_json(da.attrs),
        encoding=jsonvalues.dict_to_json(packing_encoding(da.encoding)),
    )


def _cube_id(ds: xr.Dataset) -> str:
    for key in ("id", "cube_id", "sample_id"):
        if key in ds.attrs:
            return str(ds.attrs[key])
    return uuid.uuid4().hex[:12]


def encode_cube(
    ds: xr.Dataset,
    options: EncodeOptions | None = None,
    *,
    cube_id: str | None = None,
    roles: Mapping[str, str] | None = None,
    nodata: dict[str, float | int] | None = None,
    progress: bool = False,
) -> EncodedCube:
    """Encode a Dataset with (time, y, x) or (time, band, y, x) variables.

    Continuous bands go to 12-bit x265 streams (three per stream), categorical variables and
    validity masks to lossless FFV1; other variables ride along losslessly in ``aux.nc``.
    """
    options = options or EncodeOptions()
    layout = analyse(ds, roles=roles, nodata=nodata)
    stats = {ch.name: channel_stats(ds, layout, ch) for ch in layout.channels}
    bits = LOSSLESS_BITS if options.lossless else LOSSY_BITS
    quantisers: dict[str, Quantiser] = {}
    for ch in layout.channels:
        st = stats[ch.name]
        integer = ds[ch.variable].dtype.kind in "biu"
        if ch.role == "categorical":
            quantisers[ch.name] = Quantiser(offset=st.vmin, scale=1.0, bits=16)
        else:
            quantisers[ch.name] = Quantiser.for_range(st.vmin, st.vmax, bits, integer)
    plans = plan_streams(layout, stats, options)
    for plan in plans:  # group-level lossless overrides the cube's bit depth
        if plan.kind == "continuous" and plan.settings.codec == "ffv1":
            for ch in plan.channels:
                st = stats[ch.name]
                integer = ds[ch.variable].dtype.kind in "biu"
                quantisers[ch.name] = Quantiser.for_range(st.vmin, st.vmax, LOSSLESS_BITS, integer)
    h, w = ds.sizes[layout.y_dim], ds.sizes[layout.x_dim]
    ctx = _Context(ds, layout, stats, quantisers, (h % 2, w % 2), progress)

    with ThreadPoolExecutor(max_workers=max(options.workers, 1)) as pool:
        results = list(pool.map(lambda p: _encode_plan(ctx, p), plans))

    files: dict[str, bytes] = {}
    streams: list[StreamInfo] = []
    chan_stream: dict[str, tuple[str, int]] = {}
    mask_bits: dict[str, tuple[str, int]] = {}
    for plan, (data, settings, chunks) in zip(plans, results, strict=True):
        file = f"{plan.name}.{'bits.zst' if plan.kind == 'mask' else 'mkv'}"
        files[file] = data
        planes = [c.name for c in (plan.mask_of if plan.kind == "mask" else plan.channels)]
        for i, name in enumerate(planes):
            (mask_bits if plan.kind == "mask" else chan_stream)[name] = (plan.name, i)
        codec_bits = {"bits": 1, "gray": 8}.get(
            settings.pix_fmt, LOSSY_BITS if "12" in settings.pix_fmt else LOSSLESS_BITS
        )
        streams.append(
            StreamInfo(
                name=plan.name,
                file=file,
                kind=plan.kind,
                codec=settings.codec,
                pix_fmt=settings.pix_fmt,
                planes=planes,
                bits=codec_bits,
                lossless=settings.lossless,
                crf=settings.crf if settings.codec == "libx265" else None,
                preset=settings.preset if settings.codec == "libx265" else None,
                x265_params=settings.x265_params if settings.codec == "libx265" else "",
                keyint=settings.keyint,
                nbytes=len(data),
                sha256=sha256(data),
                chunk_offsets=chunks,
            )
        )

    channels = []
    for ch in layout.channels:
        q, st = quantisers[ch.name], stats[ch.name]
        stream, plane = chan_stream[ch.name]
        mstream, mbit = mask_bits.get(ch.name, (None, None))
        channels.append(
            ChannelInfo(
                name=ch.name,
                variable=ch.variable,
                band_index=ch.band_index,
                stream=stream,
                plane=plane,
                offset=q.offset,
                scale=q.scale,
                mask_stream=mstream,
                mask_bit=mbit,
                valid_min=st.vmin,
                valid_max=st.vmax,
            )
        )
    variables = []
    for name in layout.image_vars:
        da = ds[name]
        variables.append(
            VariableInfo(
                name=name,
                dims=[str(d) for d in da.dims],
                dtype=str(da.dtype),
                role=layout.roles[name],
                band_dim=layout.band_dims[name],
                channels=[c.name for c in layout.channels_of(name)],
                nodata=jsonvalues.to_json(layout.nodata[name]),
                attrs=jsonvalues.dict_to_json(da.attrs),
                encoding=jsonvalues.dict_to_json(packing_encoding(da.encoding)),
            )
        )

    coords = {}
    aux_coords = []
    for name, c in ds.coords.items():
        if c.ndim <= 1 and (c.ndim == 0 or c.dims[0] == name or c.size < 100_000):
            coords[str(name)] = _coord_info(c)
        else:
            aux_coords.append(str(name))
    aux = None
    if layout.aux_vars or aux_coords:
        aux_ds = ds[layout.aux_vars].reset_coords(drop=True)
        aux_ds = aux_ds.assign_coords({n: ds.coords[n] for n in aux_coords})
        aux_ds.attrs = {}
        for v in aux_ds.variables.values():
            v.encoding = {}
        blob = dataset_to_bytes(aux_ds)
        files[AUX_FILE] = blob
        aux = AuxInfo(
            file=AUX_FILE,
            variables=layout.aux_vars + aux_coords,
            nbytes=len(blob),
            sha256=sha256(blob),
            encodings={
                n: jsonvalues.dict_to_json(packing_encoding(ds[n].encoding))
                for n in layout.aux_vars + aux_coords
            },
            attrs={n: jsonvalues.dict_to_json(ds[n].attrs) for n in layout.aux_vars + aux_coords},
        )

    manifest = Manifest(
        cube_id=cube_id or _cube_id(ds),
        time_dim=layout.time_dim,
        y_dim=layout.y_dim,
        x_dim=layout.x_dim,
        sizes={str(k): int(v) for k, v in ds.sizes.items()},
        pad=ctx.pad,
        coords=coords,
        attrs=jsonvalues.dict_to_json(ds.attrs),
        variables=variables,
        channels=channels,
        streams=streams,
        aux=aux,
        data_vars_order=[str(v) for v in ds.data_vars],
    )
    return EncodedCube(manifest, MemoryStore(files))


# ---------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------
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


def _decode_stream(
    enc: EncodedCube, stream: StreamInfo, start: int, stop: int, stats: DecodeStats | None
) -> np.ndarray:
    m = enc.manifest
    h, w = m.frame_shape
    data = enc.read_file(stream.file)
    if stream.kind == "mask":
        shape = (len(stream.planes), h, w)
        return decode_masks(
            data,
            stream.chunk_offsets or [0],
            stream.keyint,
            shape,
            start,
            stop,
            name=f"{enc.source}:{stream.file}",
        )
    out = np.empty((stop - start, len(stream.planes), h, w), dtype=np.uint16)
    got = 0
    for idx, planes in decode_frames(
        data, n_planes(stream.pix_fmt), start, stop, name=f"{enc.source}:{stream.file}", stats=stats
    ):
        out[idx - start] = planes[: len(stream.planes), :h, :w]
        got += 1
    if got != stop - start:
        raise CorruptStreamError(
            f"{enc.source}:{stream.file}: decoded {got} frames of {stop - start} expected "
            "(truncated stream or manifest from another cube)"
        )
    return out


def decode_cube(
    enc: EncodedCube,
    variables: Sequence[str] | None = None,
    time: slice | None = None,
    stats: DecodeStats | None = None,
) -> xr.Dataset:
    """Decode (some variables of) an encoded cube back into the Dataset that went in.

    Only the streams holding the requested variables (and their masks) are read.  ``time``
    is a frame-index slice; decoding seeks to the keyframe before its start.
    """
    m = enc.manifest
    start, stop = _time_window(m, time)
    image_names = [v.name for v in m.variables]
    aux_names = m.aux.variables if m.aux else []
    wanted = list(variables) if variables is not None else list(m.data_vars_order)
    unknown = [v for v in wanted if v not in image_names and v not in aux_names]
    if unknown:
        raise InvalidCubeError(
            f"cube {m.cube_id!r} has no variable {unknown[0]!r} (have: "
            f"{', '.join(m.data_vars_order)})"
        )
    chans = [m.channel(c) for v in m.variables if v.name in wanted for c in v.channels]
    needed = {c.stream for c in chans} | {c.mask_stream for c in chans if c.mask_stream}
    decoded = {
        s.name: _decode_stream(enc, s, start, stop, stats) for s in m.streams if s.name in needed
    }

    tsel = {m.time_dim: slice(start, stop)}
    coords: dict[str, xr.Variable] = {}
    for name, ci in m.coords.items():
        values = jsonvalues.from_json(ci.values)
        var = xr.Variable(ci.dims, np.asarray(values, dtype=np.dtype(ci.dtype)))
        if m.time_dim in ci.dims:
            var = var.isel({m.time_dim: slice(start, stop)})
        coords[name] = var

    data_vars: dict[str, xr.DataArray] = {}
    for v in m.variables:
        if v.name not in wanted:
            continue
        dtype = np.dtype(v.dtype)
        nodata = jsonvalues.from_json(v.nodata)
        bands = []
        for cname in v.channels:
            c = m.channel(cname)
            codes = decoded[c.stream][:, c.plane]
            q = Quantiser(c.offset, c.scale, m.stream(c.stream).bits)
            vals = q.from_codes(codes, dtype)
            if v.role == "continuous" and c.valid_min is not None:
                lo, hi = c.valid_min, c.valid_max
                vals = np.clip(vals, np.asarray(lo).astype(dtype), np.asarray(hi).astype(dtype))
            if c.mask_stream is not None:
                invalid = decoded[c.mask_stream][:, c.mask_bit]
                vals[invalid] = np.nan if nodata is None and dtype.kind == "f" else nodata
            bands.append(vals)
        canon = [m.time_dim, m.y_dim, m.x_dim]
        if v.band_dim is None:
            arr = bands[0]
        else:
            arr = np.stack(bands, axis=1)
            canon = [m.time_dim, v.band_dim, m.y_dim, m.x_dim]
        da = xr.DataArray(arr, dims=canon).transpose(*v.dims)
        data_vars[v.name] = _restore(da, v.attrs, v.encoding)

    if m.aux:
        aux_wanted = [n for n in m.aux.variables if n in wanted or n not in m.data_vars_order]
        if aux_wanted:
            aux_ds = dataset_from_bytes(enc.read_file(m.aux.file))
            aux_ds = aux_ds.isel({k: s for k, s in tsel.items() if k in aux_ds.dims})
            for n in aux_wanted:
                da = _restore(
                    aux_ds[n].variable.to_base_variable(),
                    m.aux.attrs.get(n, {}),
                    m.aux.encodings.get(n, {}),
                )
                if n in m.data_vars_order:
                    data_vars[n] = xr.DataArray(da)
                else:
                    coords[n] = da
    for name, ci in m.coords.items():
        _restore(coords[name], ci.attrs, ci.encoding)
    order = [n for n in m.data_vars_order if n in data_vars]
    ds = xr.Dataset({n: data_vars[n] for n in order}, coords=coords)
    for n in order:  # Dataset() re-derives dims; keep attrs/encoding set above
        ds[n].attrs, ds[n].encoding = data_vars[n].attrs, data_vars[n].encoding
    ds.attrs = jsonvalues.dict_from_json(m.attrs)
    return ds
