"""Encode an xarray cube into video streams plus a manifest.

The pipeline is streaming: frames are read from the (possibly lazy) Dataset a block at a time,
quantised, gap-filled (and decorrelated) per group, and handed to the encoders, so memory
holds a few frames per stream.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import numpy as np
import xarray as xr

from pipeline.codec import jsonvalues
from pipeline.codec.cube import analyse, cube_stats
from pipeline.codec.encoded import EncodedCube, SpoolStore, file_sha256, sha256
from pipeline.codec.groupcoder import (
    CubeContext,
    coding_gains,
    klt_moments,
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
from pipeline.codec.netcdf import dataset_to_bytes, packing_encoding
from pipeline.codec.passes import EncodedGroup, bounded_lookahead, encode_pass, stream_file
from pipeline.codec.planning import (
    EncodeOptions,
    GroupPlan,
    candidate_groups,
    plan_groups,
)
from pipeline.codec.quality import group_psnr
from pipeline.codec.search import Choice, choose, step_down
from pipeline.codec.settings import VideoSettings
from pipeline.codec.videocodecs import X265_CODEC, get_codec
from pipeline.errors import InvalidCubeError

__all__ = ["encode_cube"]

AUX_FILE = "aux.nc"


# ---------------------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------------------


def _encode_groups(
    ctx: CubeContext,
    spool: Path,
    groups: Sequence[GroupPlan],
    options: EncodeOptions,
    progress: bool,
) -> dict[str, EncodedGroup]:
    """All groups of a cube: codec and quantiser of PSNR-target groups chosen from trials
    on a sample, then one pass over the whole cube for every group, then PSNR-target groups
    checked in full and, in the rare case the model was off, re-encoded finer (down to
    lossless x265) until they meet their target."""
    targeted = [
        g
        for g in groups
        if g.kind == "continuous" and g.psnr_target is not None and not g.settings.lossless
    ]
    with ThreadPoolExecutor(max_workers=max(options.workers, 1)) as pool:
        choices = {
            c.group.name: c for c in pool.map(lambda g: choose(ctx, spool, g, options), targeted)
        }
    groups = [choices[g.name].group if g.name in choices else g for g in groups]
    h, w = ctx.shape
    settings = {
        g.name: bounded_lookahead(
            choices[g.name].settings if g.name in choices else g.settings, h * w
        )
        for g in groups
    }
    all_idx = list(range(ctx.ds.sizes[ctx.layout.time_dim]))
    done = encode_pass(
        ctx, spool, [(g, settings[g.name]) for g in groups], all_idx, "", options, progress
    )
    pending = [choices[n].group for n in choices if not done[n].settings.lossless]
    attempt = 0
    while pending:
        psnr = group_psnr(ctx, [done[g.name] for g in pending], all_idx)
        failed = [g for g in pending if psnr[g.name] < cast(float, g.psnr_target)]
        if not failed:
            break
        attempt += 1
        retry = []
        for g in failed:
            shortfall = cast(float, g.psnr_target) - psnr[g.name]
            finer = step_down(done[g.name].settings, choices[g.name].model, shortfall)
            retry.append((g, bounded_lookahead(finer, h * w)))
        for name, enc in encode_pass(ctx, spool, retry, all_idx, f".{attempt}", options).items():
            done[name].unlink()
            done[name] = enc
        pending = [g for g, s in retry if not done[g.name].settings.lossless]
    return done


def _planned(group: GroupPlan, choices: Mapping[str, Choice]) -> VideoSettings:
    return choices[group.name].settings if group.name in choices else group.settings


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
    encoded: Mapping[str, EncodedGroup], store: SpoolStore, n_frames: int
) -> list[StreamInfo]:
    out = []
    for enc in encoded.values():
        g, settings = enc.group, enc.settings
        lossy = g.kind != "mask" and not get_codec(settings.codec).lossless_only
        for s in enc.streams:
            path, file = enc.paths[s.name], stream_file(s, g.kind)
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
    ctx: CubeContext, encoded: Mapping[str, EncodedGroup]
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
