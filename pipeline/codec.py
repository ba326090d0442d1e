"""Encode an xarray cube into video streams plus a manifest, and decode it back.

The pipeline is streaming: frames are read from the (possibly lazy) Dataset a block at a time,
quantised, gap-filled and handed to the encoder, so memory holds a few frames per stream.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from pipeline import jsonvalues
from pipeline.cube import Block, Channel, ChannelStats, CubeLayout, analyse, cube_stats, iter_blocks
from pipeline.cube import valid_mask as _valid_mask
from pipeline.encoded import EncodedCube, SpoolStore, file_sha256, sha256
from pipeline.errors import CorruptStreamError, InvalidCubeError
from pipeline.manifest import (
    AuxInfo,
    ChannelInfo,
    CoordInfo,
    Manifest,
    StreamInfo,
    VariableInfo,
)
from pipeline.maskcodec import MaskWriter, decode_masks
from pipeline.netcdf import dataset_from_bytes, dataset_to_bytes, packing_encoding
from pipeline.planning import LOSSLESS_BITS, LOSSY_BITS, EncodeOptions, StreamPlan, plan_streams
from pipeline.quantize import Quantiser, TemporalFiller, pad_even
from pipeline.ratecontrol import search_crf
from pipeline.video import (
    LOSSY_CODECS,
    DecodeStats,
    VideoSettings,
    decode_frames,
    encode_frames,
    n_planes,
    open_writer,
)

READ_BLOCK = 2
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
    spool: Path


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


LARGE_FRAME = 1 << 20  # pixels
LARGE_FRAME_LOOKAHEAD = 10


def bounded_lookahead(settings: VideoSettings, frame_pixels: int) -> VideoSettings:
    """Shorter x265 lookahead for frames of a megapixel and more, unless set explicitly.

    x265 keeps every lookahead frame in full: at 1024 x 1024 x 3 planes, medium's 20 frames
    cost about 240 MB more than 10 (measured), which is what keeps a cube's encode under
    1.5 GB; on a DynamicEarthNet twin the stream was 0.7% smaller and 0.08 dB lower.
    """
    if (
        settings.codec != "libx265"
        or frame_pixels < LARGE_FRAME
        or "rc-lookahead" in settings.x265_params
    ):
        return settings
    extra = f"rc-lookahead={LARGE_FRAME_LOOKAHEAD}"
    params = f"{settings.x265_params}:{extra}" if settings.x265_params else extra
    return replace(settings, x265_params=params)


def _plan_channels(plan: StreamPlan) -> list[Channel]:
    return plan.mask_of if plan.kind == "mask" else plan.channels


def _stream_file(plan: StreamPlan, tag: str = "") -> str:
    return f"{plan.name}{tag}.{'bits.zst' if plan.kind == 'mask' else 'mkv'}"


def _frame_size(ctx: _Context, plan: StreamPlan) -> tuple[int, int]:
    """(H, W) of the stream's frames, padding included."""
    pad = stream_pad(ctx, plan)
    return ctx.ds.sizes[ctx.layout.y_dim] + pad[0], ctx.ds.sizes[ctx.layout.x_dim] + pad[1]


class _FrameBuilder:
    """Turns blocks of source values into one stream's frames.

    It keeps the gap-fill state between blocks, so a stream can be fed block after block
    alongside the other streams of the cube.
    """

    def __init__(self, ctx: _Context, plan: StreamPlan) -> None:
        self.ctx, self.plan = ctx, plan
        self.shape = (ctx.ds.sizes[ctx.layout.y_dim], ctx.ds.sizes[ctx.layout.x_dim])
        self.pad = stream_pad(ctx, plan)
        self.fillers = {
            ch.name: TemporalFiller(ctx.quantisers[ch.name].max_code) for ch in plan.channels
        }

    def _valid(self, ch: Channel, vals: np.ndarray) -> np.ndarray | None:
        """None when every pixel is valid (the common case costs no mask)."""
        nodata = self.ctx.layout.nodata[ch.variable]
        if nodata is None and vals.dtype.kind in "biu":
            return None
        valid = _valid_mask(vals, nodata)
        return None if valid.all() else valid

    def frames(self, values: Block, n: int) -> Iterator[np.ndarray]:
        plan, h, w = self.plan, *self.shape
        if plan.kind == "mask":
            invalid = np.zeros((n, len(plan.mask_of), h, w), dtype=bool)
            for b, ch in enumerate(plan.mask_of):
                valid = self._valid(ch, values[ch.name])
                if valid is not None:
                    invalid[:, b] = ~valid
            yield from invalid
            return
        planes = np.zeros((n, n_planes(plan.settings.pix_fmt), h, w), dtype=np.uint16)
        for p, ch in enumerate(plan.channels):
            q = self.ctx.quantisers[ch.name]
            vals = values[ch.name]
            if plan.kind == "categorical":
                planes[:, p] = (vals.astype(np.int64) - int(q.offset)).astype(np.uint16)
            else:
                q.quantise(vals, planes[:, p])
                valid = self._valid(ch, vals)
                for i in range(n):
                    self.fillers[ch.name].fill(planes[i, p], None if valid is None else valid[i])
        for frame in planes:
            yield pad_even(frame, self.pad)


def _open_stream(ctx: _Context, plan: StreamPlan, settings: VideoSettings, path: Path):
    if plan.kind == "mask":
        return MaskWriter(path, settings.keyint)
    return open_writer(path, *_frame_size(ctx, plan), settings)


def _progress(ctx: _Context, total: int, desc: str) -> tqdm | None:
    if not ctx.progress:
        return None
    return tqdm(total=total, desc=desc, unit="frame", leave=False)


def _encode_together(
    ctx: _Context,
    jobs: Sequence[tuple[StreamPlan, VideoSettings]],
    indices: Sequence[int],
    tag: str,
) -> dict[str, tuple[Path, list[int] | None]]:
    """Encode several streams in one pass over the source.

    Each block of frames is read once for all streams and handed to every encoder; the
    x265 encoders run their own thread pools, so while one block is quantised the
    encoders work on the previous ones and the next block is read in the background.
    """
    paths = {plan.name: ctx.spool / _stream_file(plan, tag) for plan, _ in jobs}
    writers = {plan.name: _open_stream(ctx, plan, s, paths[plan.name]) for plan, s in jobs}
    builders = {plan.name: _FrameBuilder(ctx, plan) for plan, _ in jobs}
    channels = list({c.name: c for plan, _ in jobs for c in _plan_channels(plan)}.values())
    bar = _progress(ctx, len(indices), ", ".join(p.name for p, _ in jobs))
    try:
        for block, values in iter_blocks(ctx.ds, ctx.layout, channels, indices, READ_BLOCK):
            for plan, _ in jobs:
                writer = writers[plan.name]
                for frame in builders[plan.name].frames(values, len(block)):
                    writer.write(frame)
            if bar is not None:
                bar.update(len(block))
        for w in writers.values():
            w.close()
    except BaseException:
        for path in paths.values():
            path.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return {name: (paths[name], getattr(writers[name], "offsets", None)) for name in paths}


def _stream_psnr(
    ctx: _Context, streams: Sequence[tuple[StreamPlan, bytes | Path]], indices: Sequence[int]
) -> dict[str, float]:
    """Worst channel PSNR of each encoded stream against the source, over valid pixels,
    all streams compared in one pass over the source."""
    h, w = ctx.ds.sizes[ctx.layout.y_dim], ctx.ds.sizes[ctx.layout.x_dim]
    sse: dict[str, float] = {}
    count: dict[str, int] = {}
    decoders = {
        plan.name: decode_frames(data, n_planes(plan.settings.pix_fmt), name=plan.name)
        for plan, data in streams
    }
    channels = [c for plan, _ in streams for c in plan.channels]
    for block, values in iter_blocks(ctx.ds, ctx.layout, channels, indices, READ_BLOCK):
        for plan, _ in streams:
            frames = np.stack([next(decoders[plan.name])[1][:, :h, :w] for _ in block])
            for p, ch in enumerate(plan.channels):
                vals = values[ch.name]
                valid = _valid_mask(vals, ctx.layout.nodata[ch.variable])
                dtype = ctx.ds[ch.variable].dtype
                rec = ctx.quantisers[ch.name].from_codes(frames[:, p], dtype)
                diff = rec[valid].astype(np.float64) - vals[valid].astype(np.float64)
                sse[ch.name] = sse.get(ch.name, 0.0) + float(np.dot(diff, diff))
                count[ch.name] = count.get(ch.name, 0) + int(valid.sum())
    for gen in decoders.values():
        gen.close()
    out = {}
    for plan, _ in streams:
        worst = math.inf
        for ch in plan.channels:
            st = ctx.stats[ch.name]
            mse = sse[ch.name] / max(count[ch.name], 1)
            worst = min(worst, psnr_from_mse(mse, st.vmax - st.vmin))
        out[plan.name] = worst
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


def _search_crf(ctx: _Context, plan: StreamPlan) -> VideoSettings:
    """Settings for a PSNR-target stream from trial encodes of a sample of its frames."""
    n_t = ctx.ds.sizes[ctx.layout.time_dim]
    h, w = _frame_size(ctx, plan)
    sample = _sample_indices(n_t, h * w * len(plan.channels))
    target = cast(float, plan.psnr_target)

    def quality(crf: float) -> float:
        settings = replace(plan.settings, crf=crf)
        builder = _FrameBuilder(ctx, plan)
        frames = (
            f
            for block, values in iter_blocks(ctx.ds, ctx.layout, plan.channels, sample, READ_BLOCK)
            for f in builder.frames(values, len(block))
        )
        data = encode_frames(frames, h, w, settings)
        return _stream_psnr(ctx, [(plan, data)], sample)[plan.name]

    crf = search_crf(quality, target, start=plan.settings.crf)
    if crf is None:
        return replace(plan.settings, lossless=True, crf=None)
    return replace(plan.settings, crf=crf)


def _encode_plans(
    ctx: _Context, plans: Sequence[StreamPlan], workers: int
) -> dict[str, tuple[Path, VideoSettings, list[int] | None]]:
    """All streams of a cube: PSNR targets searched on samples, then one pass over the
    whole cube for every stream, then PSNR-target streams checked in full and re-encoded
    at a lower CRF (down to lossless) until they meet their target."""
    targeted = [p for p in plans if p.kind != "mask" and p.psnr_target is not None]
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        searched = dict(
            zip(
                (p.name for p in targeted),
                pool.map(lambda p: _search_crf(ctx, p), targeted),
                strict=True,
            )
        )
    settings = {p.name: searched.get(p.name, p.settings) for p in plans}
    all_idx = list(range(ctx.ds.sizes[ctx.layout.time_dim]))
    done = {
        name: (path, settings[name], offsets)
        for name, (path, offsets) in _encode_together(
            ctx, [(p, settings[p.name]) for p in plans], all_idx, ""
        ).items()
    }
    pending = [p for p in targeted if not settings[p.name].lossless]
    attempt = 0
    while pending:
        psnr = _stream_psnr(ctx, [(p, done[p.name][0]) for p in pending], all_idx)
        failed = [p for p in pending if psnr[p.name] < cast(float, p.psnr_target)]
        if not failed:
            break
        attempt += 1
        retry = []
        for p in failed:
            crf = cast(float, settings[p.name].crf)
            settings[p.name] = (
                replace(settings[p.name], crf=crf - 2)
                if crf >= 2
                else replace(settings[p.name], lossless=True, crf=None)
            )
            retry.append((p, settings[p.name]))
        for name, (path, offsets) in _encode_together(ctx, retry, all_idx, f".{attempt}").items():
            done[name][0].unlink(missing_ok=True)
            done[name] = (path, settings[name], offsets)
        pending = [p for p, s in retry if not s.lossless]
    return done


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
    workdir: str | os.PathLike[str] | None = None,
) -> EncodedCube:
    """Encode a Dataset with (time, y, x) or (time, band, y, x) variables.

    Continuous bands go to 12-bit x265 streams (three per stream), categorical variables to
    lossless FFV1, validity masks to bit-packed zstd; other variables ride along losslessly
    in ``aux.nc``. Streams are written to files as they are encoded (in a temporary folder
    under ``workdir``, default the system's), so memory does not grow with the cube.
    """
    options = options or EncodeOptions()
    layout = analyse(ds, roles=roles, nodata=nodata)
    stats = cube_stats(ds, layout)
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
    for plan in plans:
        plan.settings = bounded_lookahead(plan.settings, h * w)
    store = SpoolStore(workdir)
    ctx = _Context(ds, layout, stats, quantisers, (h % 2, w % 2), progress, store.path)
    results = _encode_plans(ctx, plans, options.workers)

    streams: list[StreamInfo] = []
    chan_stream: dict[str, tuple[str, int]] = {}
    mask_bits: dict[str, tuple[str, int]] = {}
    for plan in plans:
        path, settings, chunks = results[plan.name]
        file = _stream_file(plan)
        if path.name != file:
            path = path.replace(store.path / file)
        planes = [c.name for c in _plan_channels(plan)]
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
                crf=settings.crf if settings.codec in LOSSY_CODECS else None,
                preset=settings.preset if settings.codec in LOSSY_CODECS else None,
                x265_params=settings.x265_params if settings.codec == "libx265" else "",
                keyint=settings.keyint,
                nbytes=path.stat().st_size,
                sha256=file_sha256(path),
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
        store.write(AUX_FILE, blob)
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
    return EncodedCube(manifest, store)


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


class _StreamFrames:
    """Consecutive frames of one stream from ``start`` on, decoded as they are asked for.

    Video streams keep their decoder open between windows (so a cube read window after
    window is decoded once), and read the stream from its file where the cube is on disk.
    """

    def __init__(
        self, enc: EncodedCube, stream: StreamInfo, start: int, stop: int, stats: DecodeStats
    ) -> None:
        m = enc.manifest
        self.stream, self.start, self.pos, self.stop = stream, start, start, stop
        self.shape = (len(stream.planes), *m.frame_shape)
        self.name = f"{enc.source}:{stream.file}"
        if stream.kind == "mask":
            self._data = enc.read_file(stream.file)
            return
        source: bytes | Path | None = enc.file_path(stream.file)
        if source is None:
            source = enc.read_file(stream.file)
        self._frames = decode_frames(
            source, n_planes(stream.pix_fmt), start, stop, name=self.name, stats=stats
        )

    def take(self, n: int) -> np.ndarray:
        """The next n frames as (n, planes, H, W): bool for masks, uint16 codes otherwise."""
        lo, hi = self.pos, self.pos + n
        self.pos = hi
        if self.stream.kind == "mask":
            s = self.stream
            return decode_masks(
                self._data, s.chunk_offsets or [0], s.keyint, self.shape, lo, hi, name=self.name
            )
        h, w = self.shape[1:]
        out = np.empty((n, *self.shape), dtype=np.uint16)
        for i in range(n):
            got = next(self._frames, None)
            if got is None:
                raise CorruptStreamError(
                    f"{self.name}: decoded {lo - self.start + i} frames of "
                    f"{self.stop - self.start} expected (truncated stream or manifest from "
                    "another cube)"
                )
            out[i] = got[1][: self.shape[0], :h, :w]
        return out

    def close(self) -> None:
        if self.stream.kind != "mask":
            self._frames.close()


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
    chans = [m.channel(c) for v in m.variables if v.name in wanted for c in v.channels]
    needed = {c.stream for c in chans} | {c.mask_stream for c in chans if c.mask_stream}
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
                np.clip(vals, np.asarray(lo).astype(dtype), np.asarray(hi).astype(dtype), out=vals)
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

    if m.aux and aux is not None:
        tsel = {m.time_dim: slice(start, stop)}
        aux_ds = aux.isel({k: sl for k, sl in tsel.items() if k in aux.dims})
        for n in m.aux.variables:
            if n not in wanted and n in m.data_vars_order:
                continue
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


def _aux_dataset(enc: EncodedCube, wanted: Sequence[str]) -> xr.Dataset | None:
    m = enc.manifest
    if not m.aux or not any(n in wanted or n not in m.data_vars_order for n in m.aux.variables):
        return None
    return dataset_from_bytes(enc.read_file(m.aux.file))


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
    readers = [_StreamFrames(enc, s, start, stop, stats) for s in _needed_streams(m, wanted)]
    aux = _aux_dataset(enc, wanted)
    try:
        for lo in range(start, stop, window):
            hi = min(lo + window, stop)
            decoded = {r.stream.name: r.take(hi - lo) for r in readers}
            yield _assemble(enc, wanted, decoded, lo, hi, aux)
    finally:
        for r in readers:
            r.close()


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
