"""Encode an xarray cube into video streams plus a manifest, and decode it back.

The pipeline is streaming: frames are read from the (possibly lazy) Dataset a block at a time,
quantised, gap-filled (and decorrelated) per group, and handed to the encoders, so memory
holds a few frames per stream.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from pipeline.codec import jsonvalues
from pipeline.codec.codemap import CodeMap
from pipeline.codec.cube import Block, analyse, cube_stats, iter_blocks
from pipeline.codec.cube import valid_mask as _valid_mask
from pipeline.codec.encoded import EncodedCube, SpoolStore, file_sha256, sha256
from pipeline.codec.engines import open_writer
from pipeline.codec.ffmpeg_engine import EncoderFailed
from pipeline.codec.groupcoder import (
    CubeContext,
    GroupCoder,
    coding_gains,
    klt_moments,
    psnr_from_mse,
    stream_frame,
    stream_size,
    untile,
)
from pipeline.codec.manifest import (
    AuxInfo,
    ChannelInfo,
    CoordInfo,
    Manifest,
    StreamInfo,
    TransformInfo,
    VariableInfo,
)
from pipeline.codec.masks import MaskWriter, decode_masks
from pipeline.codec.netcdf import dataset_from_bytes, dataset_to_bytes, packing_encoding
from pipeline.codec.planning import (
    AUTO,
    EncodeOptions,
    GroupPlan,
    StreamPlan,
    candidate_groups,
    codec_candidates,
    plan_groups,
)
from pipeline.codec.pyav_engine import DecodeStats, decode_frames
from pipeline.codec.ratecontrol import search_crf
from pipeline.codec.settings import VideoSettings, n_planes
from pipeline.codec.videocodecs import X265_CODEC, get_codec
from pipeline.errors import CorruptStreamError, CubecastError, InvalidCubeError, ManifestError

__all__ = ["decode_cube", "encode_cube", "iter_decode", "psnr_from_mse"]

READ_BLOCK = 2
AUX_FILE = "aux.nc"
LARGE_FRAME = 1 << 20  # pixels
LARGE_FRAME_LOOKAHEAD = 10


# ---------------------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------------------
def bounded_lookahead(settings: VideoSettings, frame_pixels: int) -> VideoSettings:
    """Shorter x265 lookahead for frames of a megapixel and more, unless set explicitly.

    x265 keeps every lookahead frame in full: at 1024 x 1024 x 3 planes, medium's 20 frames
    cost about 240 MB more than 10 (measured), which is what keeps a cube's encode under
    1.5 GB; on a DynamicEarthNet twin the stream was 0.7% smaller and 0.08 dB lower.
    """
    if (
        settings.codec != X265_CODEC.name
        or frame_pixels < LARGE_FRAME
        or "rc-lookahead" in settings.x265_params
    ):
        return settings
    extra = f"rc-lookahead={LARGE_FRAME_LOOKAHEAD}"
    params = f"{settings.x265_params}:{extra}" if settings.x265_params else extra
    return replace(settings, x265_params=params)


def _stream_file(stream: StreamPlan, kind: str, tag: str = "") -> str:
    return f"{stream.name}{tag}.{'bits.zst' if kind == 'mask' else 'mkv'}"


@dataclass
class _Encoded:
    """One group as written: its settings, streams and files, and the frames it kept."""

    group: GroupPlan
    settings: VideoSettings
    coder: GroupCoder
    streams: list[StreamPlan]
    paths: dict[str, Path]
    offsets: dict[str, list[int] | None]
    kept: list[int]
    sizes: dict[str, tuple[int, int]]  # each video stream's frame size (none for masks)
    failed: str | None = None  # the encoder's message when it refused these frames
    # each channel's PSNR over the whole cube, where the encoder measured it (PSNR targets)
    psnr: dict[str, float] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths.values())

    def unlink(self) -> None:
        for p in self.paths.values():
            p.unlink(missing_ok=True)


def _progress(enabled: bool, total: int, desc: str) -> tqdm | None:
    if not enabled:
        return None
    return tqdm(total=total, desc=desc, unit="frame", leave=False)


def _encode_together(
    ctx: CubeContext,
    spool: Path,
    jobs: Sequence[tuple[GroupPlan, VideoSettings]],
    indices: Sequence[int],
    tag: str,
    progress: bool = False,
) -> dict[str, _Encoded]:
    """Encode several groups in one pass over the source.

    Each block of frames is read once for all groups and handed to every encoder; the
    encoders run in their own processes (or x265's thread pool), so while one block is
    quantised the encoders work on the previous ones and the next block is read in the
    background.
    """
    out: dict[str, _Encoded] = {}
    writers: dict[str, object] = {}
    for group, settings in jobs:
        coder = GroupCoder(ctx, group, settings)
        streams = group.streams(settings)
        paths = {s.name: spool / _stream_file(s, group.kind, tag) for s in streams}
        sizes = (
            {}
            if group.kind == "mask"
            else {s.name: stream_size(coder.tile, s.tiles, s.settings) for s in streams}
        )
        out[group.name] = _Encoded(group, settings, coder, streams, paths, {}, [], sizes)
        for s in streams:
            writers[s.name] = (
                MaskWriter(paths[s.name], settings.keyint)
                if group.kind == "mask"
                else open_writer(paths[s.name], *sizes[s.name], s.settings)
            )
    channels = list(
        {
            c.name: c for g, _ in jobs for c in (g.mask_of if g.kind == "mask" else g.channels)
        }.values()
    )
    bar = _progress(progress, len(indices), ", ".join(g.name for g, _ in jobs))
    try:
        for block, values in iter_blocks(ctx.ds, ctx.layout, channels, indices, READ_BLOCK):
            for enc in out.values():
                if enc.failed is None:
                    _feed(enc, writers, block, values)
            if bar is not None:
                bar.update(len(block))
        for enc in out.values():
            for s in enc.streams:
                w = writers[s.name]
                if enc.failed is not None or not (enc.kept or enc.group.kind == "mask"):
                    _abandon(w, enc.paths[s.name])  # nothing valid, or the encoder gave up
                    continue
                try:
                    w.close()  # type: ignore[attr-defined]
                except EncoderFailed as exc:
                    enc.failed = str(exc)
                enc.offsets[s.name] = getattr(w, "offsets", None)
    except BaseException:
        for enc in out.values():
            enc.unlink()
        raise
    finally:
        if bar is not None:
            bar.close()
    return out


def _feed(
    enc: _Encoded, writers: Mapping[str, object], block: Sequence[int], values: Block
) -> None:
    """One block of a group's frames into its writers; an encoder that gives up marks the
    group failed (the caller picks another codec) instead of failing the whole pass."""
    for idx, (keep, planes) in zip(block, enc.coder.frames(values, len(block)), strict=True):
        if not keep:
            continue
        enc.kept.append(idx)
        try:
            for s in enc.streams:
                frame = planes[s.planes[0] : s.planes[-1] + 1]  # contiguous: a view
                if enc.group.kind != "mask":
                    frame = stream_frame(frame, enc.coder.tile, enc.sizes[s.name], s.tiles)
                writers[s.name].write(frame)  # type: ignore[attr-defined]
        except EncoderFailed as exc:
            enc.failed = str(exc)
            return


def _abandon(writer: object, path: Path) -> None:
    try:
        writer.close()  # type: ignore[attr-defined]
    except InvalidCubeError:
        pass  # an encoder given no frame may refuse to finish: there is nothing to keep
    path.unlink(missing_ok=True)
    path.touch()


def _group_psnr(
    ctx: CubeContext, encoded: Sequence[_Encoded], indices: Sequence[int]
) -> dict[str, float]:
    """Worst channel PSNR of each encoded group against the source over valid pixels, every
    group compared in one pass over the source and decoded as a reader decodes it."""
    h, w = ctx.shape
    sse: dict[str, float] = {}
    count: dict[str, int] = {}
    decoders = {
        s.name: decode_frames(e.paths[s.name], n_planes(s.settings.pix_fmt), name=s.name)
        for e in encoded
        if e.kept
        for s in e.streams
    }
    codemap = CodeMap(
        {c.name: c for e in encoded for c in e.coder.channel_infos(e.streams)},
        {t.name: t for e in encoded if (t := e.coder.transform_info(e.streams))},
        {s.name: e.coder.quantisers[0].bits for e in encoded for s in e.streams},
    )
    channels = [c for e in encoded for c in e.group.channels]
    kept = {e.group.name: set(e.kept) for e in encoded}
    try:
        for block, values in iter_blocks(ctx.ds, ctx.layout, channels, indices, READ_BLOCK):
            for e in encoded:
                rows = [i for i, idx in enumerate(block) if idx in kept[e.group.name]]
                if not rows:
                    continue
                decoded = {
                    s.name: np.stack(
                        [untile(next(decoders[s.name])[1], s.tiles, h)[:, :h, :w] for _ in rows]
                    )
                    for s in e.streams
                }
                for ch in e.group.channels:
                    vals = values[ch.name][rows]
                    valid = _valid_mask(vals, ctx.layout.nodata[ch.variable])
                    rec = codemap.values(ch.name, decoded, ctx.ds[ch.variable].dtype)
                    diff = rec[valid].astype(np.float64) - vals[valid].astype(np.float64)
                    sse[ch.name] = sse.get(ch.name, 0.0) + float(np.dot(diff, diff))
                    count[ch.name] = count.get(ch.name, 0) + int(valid.sum())
    finally:
        for gen in decoders.values():
            gen.close()
    out = {}
    for e in encoded:
        worst = float("inf")
        for ch in e.group.channels:
            st = ctx.stats[ch.name]
            if count.get(ch.name):
                mse = sse[ch.name] / count[ch.name]
                e.psnr[ch.name] = psnr_from_mse(mse, st.vmax - st.vmin)
                worst = min(worst, e.psnr[ch.name])
        out[e.group.name] = worst
    return out


def _sample_indices(n_frames: int, frame_pixels: int, budget: int = 2_000_000) -> list[int]:
    """Contiguous runs spread over the cube: enough to predict quality, far cheaper than all."""
    total = max(budget // max(frame_pixels, 1), 8)
    if total >= n_frames:
        return list(range(n_frames))
    runs = 4
    run = max(total // runs, 2)
    starts = np.linspace(0, n_frames - run, runs).astype(int)
    return sorted({i for s in starts for i in range(s, s + run)})


def _search_codec(
    ctx: CubeContext,
    spool: Path,
    group: GroupPlan,
    base: VideoSettings,
    sample: Sequence[int],
    start: float | None,
) -> tuple[int, VideoSettings] | None:
    """(sample bytes, settings) at the largest CRF/QP of ``base``'s codec that meets the
    group's floor on the sample, or None if even the best quality misses it."""
    sizes: dict[float, int] = {}

    def quality(crf: float) -> float:
        trial = _encode_together(ctx, spool, [(group, replace(base, crf=crf))], sample, ".trial")
        enc = trial[group.name]
        try:
            if enc.failed is not None:
                return float("-inf")  # this quantiser is beyond the encoder
            sizes[crf] = enc.nbytes
            return _group_psnr(ctx, [enc], sample)[group.name]
        finally:
            enc.unlink()

    target = cast(float, group.psnr_target)
    crf = search_crf(quality, target, start=start, hi=get_codec(base.codec).max_quality)
    return None if crf is None else (sizes[float(crf)], replace(base, crf=float(crf)))


def _search(
    ctx: CubeContext, spool: Path, group: GroupPlan, options: EncodeOptions
) -> tuple[GroupPlan, VideoSettings]:
    """Codec, quantiser and decorrelation for a PSNR-target group, from trial encodes of a
    sample of its frames: each candidate codec's largest CRF/QP that meets the floor, and
    of those the one with the fewest bytes; a KLT group is then also tried without its KLT
    on the winning codec (the KLT's fixed step can cost more than it saves near a codec's
    quality limit), and the fewer bytes win."""
    h, w = ctx.shape
    sample = _sample_indices(ctx.ds.sizes[ctx.layout.time_dim], h * w * len(group.channels))
    target = cast(float, group.psnr_target)
    best: tuple[int, GroupPlan, VideoSettings] | None = None
    start = group.settings.crf
    for name in codec_candidates(options, group.settings.engine, target, ctx.shape):
        found = _search_codec(ctx, spool, group, replace(group.settings, codec=name), sample, start)
        if found is None:
            continue
        if best is None or found[0] < best[0]:
            best = (found[0], group, found[1])
        start = found[1].crf
    if group.decorrelate == "klt" and options.decorrelate == AUTO:
        plain = replace(group, decorrelate="none")
        for name in (
            [best[2].codec]
            if best
            else codec_candidates(options, group.settings.engine, target, ctx.shape)
        ):
            base = replace(group.settings, codec=name)
            found = _search_codec(ctx, spool, plain, base, sample, best[2].crf if best else start)
            if found is not None and (best is None or found[0] < best[0]):
                best = (found[0], plain, found[1])
    if best is None:
        return group, replace(group.settings, codec=X265_CODEC.name, lossless=True, crf=None)
    return best[1], best[2]


def _step_down(settings: VideoSettings) -> VideoSettings:
    """The next setting to try for a group that missed its floor over the whole cube."""
    crf = cast(float, settings.crf)
    if crf >= 2:
        return replace(settings, crf=crf - 2)
    return replace(settings, codec=X265_CODEC.name, lossless=True, crf=None)


def _encode_groups(
    ctx: CubeContext,
    spool: Path,
    groups: Sequence[GroupPlan],
    options: EncodeOptions,
    progress: bool,
) -> dict[str, _Encoded]:
    """All groups of a cube: PSNR targets searched on samples, then one pass over the
    whole cube for every group, then PSNR-target groups checked in full and re-encoded a
    step lower (down to lossless x265) until they meet their target."""
    targeted = [
        g
        for g in groups
        if g.kind == "continuous" and g.psnr_target is not None and not g.settings.lossless
    ]
    with ThreadPoolExecutor(max_workers=max(options.workers, 1)) as pool:
        found = list(pool.map(lambda g: _search(ctx, spool, g, options), targeted))
    searched = {g.name: s for g, s in found}
    chosen = {g.name: g for g, _ in found}  # a group may have dropped its KLT
    groups = [chosen.get(g.name, g) for g in groups]
    targeted = [chosen[g.name] for g in targeted]
    h, w = ctx.shape
    settings = {g.name: bounded_lookahead(searched.get(g.name, g.settings), h * w) for g in groups}
    all_idx = list(range(ctx.ds.sizes[ctx.layout.time_dim]))
    jobs = [(g, settings[g.name]) for g in groups]
    done = _encode_pass(ctx, spool, jobs, all_idx, "", options, progress)
    pending = [g for g in targeted if not settings[g.name].lossless]
    attempt = 0
    while pending:
        psnr = _group_psnr(ctx, [done[g.name] for g in pending], all_idx)
        failed = [g for g in pending if psnr[g.name] < cast(float, g.psnr_target)]
        if not failed:
            break
        attempt += 1
        retry = []
        for g in failed:
            settings[g.name] = bounded_lookahead(_step_down(settings[g.name]), h * w)
            retry.append((g, settings[g.name]))
        for name, enc in _encode_pass(ctx, spool, retry, all_idx, f".{attempt}", options).items():
            done[name].unlink()
            done[name] = enc
        pending = [g for g, s in retry if not done[g.name].settings.lossless]
    return done


def _encode_pass(
    ctx: CubeContext,
    spool: Path,
    jobs: Sequence[tuple[GroupPlan, VideoSettings]],
    indices: Sequence[int],
    tag: str,
    options: EncodeOptions,
    progress: bool = False,
) -> dict[str, _Encoded]:
    """One pass over the cube; a group whose encoder gave up is encoded again with x265
    when the codec was the planner's choice, and is an error when the user named it.

    The writers count the frames they get back, so an encoder that gives up shows here even
    when it exits 0 (vvenc 1.15's thread pool did, about one encode in three on 2 cores).
    """
    done = _encode_together(ctx, spool, jobs, indices, tag, progress)
    failed = [(g, s) for g, s in jobs if done[g.name].failed is not None]
    if not failed:
        return done
    if options.codec != AUTO:
        g, s = failed[0]
        raise InvalidCubeError(
            f"group {g.name!r}: {s.codec} at quantiser {s.crf:g} refused the frames "
            f"({done[g.name].failed}); use a higher crf/psnr target or another codec"
        )
    retry = [
        (g, replace(s, codec=X265_CODEC.name, crf=min(cast(float, s.crf), X265_CODEC.max_quality)))
        for g, s in failed
    ]
    for g, _ in retry:
        done[g.name].unlink()
    done.update(_encode_together(ctx, spool, retry, indices, f"{tag}.x265", progress))
    return done


def _runs(kept: Sequence[int], n_frames: int) -> list[tuple[int, int]] | None:
    """[start, stop) runs of the stored frames; None when every frame is stored."""
    if len(kept) == n_frames:
        return None
    runs: list[tuple[int, int]] = []
    for i in kept:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _stream_infos(
    encoded: Mapping[str, _Encoded], store: SpoolStore, n_frames: int
) -> list[StreamInfo]:
    out = []
    for enc in encoded.values():
        g, settings = enc.group, enc.settings
        lossy = g.kind != "mask" and not get_codec(settings.codec).lossless_only
        for s in enc.streams:
            path, file = enc.paths[s.name], _stream_file(s, g.kind)
            if path.name != file:
                path = path.replace(store.path / file)
                enc.paths[s.name] = path
            if g.kind == "mask":
                bits = 1
                planes = [c.name for c in g.mask_of] + [f"{c.name}:{sign}" for c, sign in g.inf_of]
            elif g.words:
                bits, planes = 16, [f"{g.channels[0].name}.w{p}" for p in s.planes]
            else:
                planes = (
                    [c.name for c in g.channels]
                    if enc.coder.klt is None
                    else [f"{g.name}.pc{k}" for k in range(enc.coder.klt.n_components)]
                )
                planes = [planes[p] for p in s.planes]
                bits = 8 if s.settings.pix_fmt == "gray" else enc.coder.quantisers[0].bits
            out.append(
                StreamInfo(
                    name=s.name,
                    file=file,
                    kind=g.kind,
                    codec=s.settings.codec,
                    pix_fmt=s.settings.pix_fmt,
                    planes=planes,
                    bits=bits,
                    lossless=s.settings.lossless,
                    crf=s.settings.crf if lossy and not s.settings.lossless else None,
                    preset=s.settings.preset if lossy else None,
                    x265_params=(
                        s.settings.x265_params if s.settings.codec == X265_CODEC.name else ""
                    ),
                    keyint=s.settings.keyint,
                    backend=s.settings.engine if g.kind != "mask" else "zstd",
                    nbytes=path.stat().st_size,
                    sha256=file_sha256(path),
                    chunk_offsets=enc.offsets.get(s.name),
                    tiles=s.tiles,
                    frames=_runs(enc.kept, n_frames) if g.kind == "continuous" else None,
                )
            )
    return out


def _channel_infos(
    ctx: CubeContext, encoded: Mapping[str, _Encoded]
) -> tuple[list[ChannelInfo], list[TransformInfo]]:
    infos: dict[str, ChannelInfo] = {}
    transforms = []
    masks = {}
    infs: dict[tuple[str, str], int] = {}
    for enc in encoded.values():
        if enc.group.kind == "mask":
            s = enc.streams[0]
            masks |= {c.name: (s.name, b) for b, c in enumerate(enc.group.mask_of)}
            for b, (c, sign) in enumerate(enc.group.inf_of, start=len(enc.group.mask_of)):
                infs[(c.name, sign)] = b
            continue
        infos |= {c.name: c for c in enc.coder.channel_infos(enc.streams)}
        t = enc.coder.transform_info(enc.streams)
        if t is not None:
            transforms.append(t)
    channels = []
    for ch in ctx.layout.channels:
        mstream, mbit = masks.get(ch.name, (None, None))
        update = {
            "mask_stream": mstream,
            "mask_bit": mbit,
            "posinf_bit": infs.get((ch.name, "+inf")),
            "neginf_bit": infs.get((ch.name, "-inf")),
            "psnr": next((e.psnr[ch.name] for e in encoded.values() if ch.name in e.psnr), None),
        }
        channels.append(infos[ch.name].model_copy(update=update))
    return channels, transforms


def _coord_info(name: str, da: xr.DataArray) -> CoordInfo:
    if not isinstance(da.dtype, np.dtype):  # a pandas extension type (tz-aware times, ...)
        raise InvalidCubeError(
            f"coordinate {name!r} has dtype {da.dtype}, which cubecast cannot store: convert "
            "it to a numpy dtype (timezone-aware times: to naive UTC datetime64)"
        )
    problem = jsonvalues.storable(np.asarray(da.values))
    if problem:
        raise InvalidCubeError(f"coordinate {name!r} cannot be stored: {problem}")
    return CoordInfo(
        dims=[str(d) for d in da.dims],
        dtype=str(da.dtype),
        values=jsonvalues.to_json(np.asarray(da.values)),
        attrs=jsonvalues.dict_to_json(da.attrs),
        encoding=jsonvalues.dict_to_json(packing_encoding(da.encoding)),
    )


def _cube_id(ds: xr.Dataset) -> str | None:
    for key in ("id", "cube_id", "sample_id"):
        if key in ds.attrs:
            return str(ds.attrs[key])
    return None


def _content_id(manifest: Manifest) -> str:
    """An id for a cube that names none: a hash of its manifest (which holds every file's
    SHA-256), so the same cube and settings give the same id and the same bytes."""
    return hashlib.sha256(manifest.to_json().encode()).hexdigest()[:12]


def _variable_infos(ds: xr.Dataset, ctx: CubeContext) -> list[VariableInfo]:
    layout = ctx.layout
    out = []
    for name in layout.image_vars:
        da = ds[name]
        out.append(
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
    return out


def _coords_and_aux(
    ds: xr.Dataset, ctx: CubeContext, store: SpoolStore
) -> tuple[dict[str, CoordInfo], AuxInfo | None]:
    """1-D coordinates go into the manifest (compactly); other variables and large
    multi-dimensional coordinates into ``aux.nc``, written only when there are any."""
    coords = {}
    aux_coords = []
    for name, c in ds.coords.items():
        if c.ndim <= 1 and (c.ndim == 0 or c.dims[0] == name or c.size < 100_000):
            coords[str(name)] = _coord_info(str(name), c)
        else:
            aux_coords.append(str(name))
    aux_vars = ctx.layout.aux_vars
    if not (aux_vars or aux_coords):
        return coords, None
    aux_ds = ds[aux_vars].reset_coords(drop=True)
    aux_ds = aux_ds.assign_coords({n: ds.coords[n] for n in aux_coords})
    aux_ds.attrs = {}
    for v in aux_ds.variables.values():
        v.encoding = {}
        v.attrs = {}  # kept in the manifest (any JSON value: dicts too), restored on decode
    blob = dataset_to_bytes(aux_ds)
    store.write(AUX_FILE, blob)
    names = aux_vars + aux_coords
    return coords, AuxInfo(
        file=AUX_FILE,
        variables=names,
        nbytes=len(blob),
        sha256=sha256(blob),
        encodings={n: jsonvalues.dict_to_json(packing_encoding(ds[n].encoding)) for n in names},
        attrs={n: jsonvalues.dict_to_json(ds[n].attrs) for n in names},
    )


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

    Continuous bands are grouped, decorrelated where they correlate (a KLT) and coded as
    lossy video (VVC, x265 or AV1: chosen per group under a PSNR target); categorical
    variables go to lossless FFV1, validity masks to bit-packed zstd; other variables ride
    along losslessly in ``aux.nc``. Streams are written to files as they are encoded (in a
    temporary folder under ``workdir``, default the system's), so memory does not grow
    with the cube.
    """
    options = options or EncodeOptions()
    layout = analyse(ds, roles=roles, nodata=nodata)

    def lossless(spec: object) -> bool:
        own = getattr(spec, "lossless", None)
        return options.lossless if own is None else bool(own)

    klt_candidates = [
        chans
        for chans, spec in candidate_groups(layout, options.groups)
        if options.decorrelate != "none" and not lossless(spec)
    ]
    moments = klt_moments(layout, klt_candidates)
    stats = cube_stats(ds, layout, moments=moments)
    shape = (ds.sizes[layout.y_dim], ds.sizes[layout.x_dim])
    groups = plan_groups(layout, stats, options, coding_gains(moments, stats), shape)
    store = SpoolStore(workdir)
    ctx = CubeContext(ds, layout, stats, moments, options.skip_empty)
    encoded = _encode_groups(ctx, store.path, groups, options, progress)
    n_frames = ds.sizes[layout.time_dim]
    channels, transforms = _channel_infos(ctx, encoded)
    coords, aux = _coords_and_aux(ds, ctx, store)
    h, w = ctx.shape
    manifest = Manifest(
        cube_id=cube_id or _cube_id(ds) or "",
        time_dim=layout.time_dim,
        y_dim=layout.y_dim,
        x_dim=layout.x_dim,
        sizes={str(k): int(v) for k, v in ds.sizes.items()},
        pad=(h % 2, w % 2),
        coords=coords,
        attrs=jsonvalues.dict_to_json(ds.attrs),
        variables=_variable_infos(ds, ctx),
        channels=channels,
        streams=_stream_infos(encoded, store, n_frames),
        transforms=transforms,
        aux=aux,
        data_vars_order=[str(v) for v in ds.data_vars],
    )
    if not manifest.cube_id:
        manifest = manifest.model_copy(update={"cube_id": _content_id(manifest)})
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
        if last > first:
            self._frames = decode_frames(
                source, n_planes(stream.pix_fmt), first, last, name=self.name, stats=stats
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
            if lo + i not in self._stored_set:
                out[i] = 0
                continue
            got = next(self._frames, None)
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

    data_vars: dict[str, xr.DataArray] = {}
    codemap = CodeMap.from_manifest(m)
    for v in m.variables:
        if v.name not in wanted:
            continue
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
