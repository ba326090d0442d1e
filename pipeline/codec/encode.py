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

import xarray as xr

from pipeline.codec import jsonvalues, rawcarrier
from pipeline.codec.cube import analyse, cube_stats
from pipeline.codec.describe import channel_infos, coords_and_aux, stream_infos, variable_infos
from pipeline.codec.encoded import EncodedCube, SpoolStore
from pipeline.codec.groupcoder import (
    CubeContext,
    coding_gains,
    klt_moments,
)
from pipeline.codec.hedge import encode_hedged, hedge_jobs, keep_hedges, worth_hedging
from pipeline.codec.manifest import (
    RAW_CARRIER_VERSION,
    Manifest,
)
from pipeline.codec.memory import block_frames, limit_heap_growth, release_free_memory
from pipeline.codec.passes import EncodedGroup, bounded_lookahead, encode_pass
from pipeline.codec.planning import (
    EncodeOptions,
    GroupPlan,
    candidate_groups,
    plan_groups,
)
from pipeline.codec.quality import group_psnr
from pipeline.codec.search import Choice, choose, step_down
from pipeline.codec.settings import VideoSettings
from pipeline.errors import InvalidCubeError

__all__ = ["encode_cube"]


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
    options = worth_hedging(groups, options)
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
    jobs = [(g, settings[g.name]) for g in groups]
    hedges = hedge_jobs(jobs, set(choices), options, ctx.shape[1])
    done, alts = encode_hedged(ctx, spool, jobs, hedges, all_idx, options, progress)
    pending = [choices[n].group for n in choices]  # lossless x265 too: its codes are 12-bit
    attempt = 0
    while pending:
        psnr = keep_hedges(done, alts)
        alts = None
        unchecked = [done[g.name] for g in pending if g.name not in psnr]
        psnr |= group_psnr(ctx, unchecked, all_idx) if unchecked else {}
        failed = [g for g in pending if psnr[g.name] < cast(float, g.psnr_target)]
        if not failed:
            break
        _refuse_unreachable(failed, done, psnr)
        attempt += 1
        retry = []
        for g in failed:
            shortfall = cast(float, g.psnr_target) - psnr[g.name]
            finer = step_down(done[g.name].settings, choices[g.name].model, shortfall)
            retry.append((g, bounded_lookahead(finer, h * w)))
        for name, enc in encode_pass(ctx, spool, retry, all_idx, f".{attempt}", options).items():
            done[name].unlink()
            done[name] = enc
        pending = [g for g, _ in retry]
    return done


def _refuse_unreachable(
    failed: Sequence[GroupPlan], done: Mapping[str, EncodedGroup], psnr: Mapping[str, float]
) -> None:
    """A group that missed its floor even coded losslessly: its quantisation to the codec's
    depth is the limit (about 83 dB on a smooth float band at 12 bits), nothing finer is left."""
    for g in failed:
        if done[g.name].settings.lossless:
            raise InvalidCubeError(
                f"group {g.name!r}: a PSNR floor of {g.psnr_target:g} dB is out of reach: "
                f"coded losslessly at {done[g.name].coder.quantisers[0].bits} bits it decodes "
                f"at {psnr[g.name]:.2f} dB; lower the floor or set lossless (FFV1, exact)"
            )


def _planned(group: GroupPlan, choices: Mapping[str, Choice]) -> VideoSettings:
    return choices[group.name].settings if group.name in choices else group.settings


def _cube_id(ds: xr.Dataset) -> str | None:
    for key in ("id", "cube_id", "sample_id"):
        if key in ds.attrs:
            return str(ds.attrs[key])
    return None


def _content_id(manifest: Manifest) -> str:
    """An id for a cube that names none: a hash of its manifest (which holds every file's
    SHA-256), so the same cube and settings give the same id and the same bytes."""
    return hashlib.sha256(manifest.to_json().encode()).hexdigest()[:12]


def _analyse(
    ds: xr.Dataset,
    options: EncodeOptions,
    roles: Mapping[str, str] | None,
    nodata: dict[str, float | int] | None,
) -> tuple[CubeContext, list[GroupPlan]]:
    """The cube's layout and stats (one read, KLT moments included) and its groups."""
    limit_heap_growth()
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
    shape = (ds.sizes[layout.y_dim], ds.sizes[layout.x_dim])
    stats = cube_stats(ds, layout, moments=moments, block=block_frames(shape[0] * shape[1], 2))
    release_free_memory()
    groups = plan_groups(layout, stats, options, coding_gains(moments, stats), shape)
    return CubeContext(ds, layout, stats, moments, options.skip_empty), groups


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
    variables go to lossless zstd chunks, validity masks to bit-packed zstd; other variables ride
    along losslessly in ``aux.nc``. Streams are written to files as they are encoded (in a
    temporary folder under ``workdir``, default the system's), so memory does not grow
    with the cube.
    """
    options = options or EncodeOptions()
    ctx, groups = _analyse(ds, options, roles, nodata)
    store = SpoolStore(workdir)
    encoded = _encode_groups(ctx, store.path, groups, options, progress)
    layout = ctx.layout
    n_frames = ds.sizes[layout.time_dim]
    channels, transforms = channel_infos(ctx, encoded)
    coords, aux = coords_and_aux(ds, ctx, store)
    h, w = ctx.shape
    streams = stream_infos(encoded, store, n_frames, options.carrier)
    raw = any(s.carrier == rawcarrier.CARRIER for s in streams)
    manifest = Manifest(
        # the oldest version that reads it: cubes without raw streams stay version 3
        version=RAW_CARRIER_VERSION if raw else RAW_CARRIER_VERSION - 1,
        cube_id=cube_id or _cube_id(ds) or "",
        time_dim=layout.time_dim,
        y_dim=layout.y_dim,
        x_dim=layout.x_dim,
        sizes={str(k): int(v) for k, v in ds.sizes.items()},
        pad=(h % 2, w % 2),
        coords=coords,
        attrs=jsonvalues.dict_to_json(ds.attrs),
        variables=variable_infos(ds, ctx),
        channels=channels,
        streams=streams,
        transforms=transforms,
        aux=aux,
        data_vars_order=[str(v) for v in ds.data_vars],
    )
    if not manifest.cube_id:
        manifest = manifest.model_copy(update={"cube_id": _content_id(manifest)})
    return EncodedCube(manifest, store)
