"""Encode an xarray cube into video streams plus a manifest.

The pipeline is streaming: frames are read from the (possibly lazy) Dataset a block at a time,
quantised, gap-filled (and decorrelated) per group, and handed to the encoders, so memory
holds a few frames per stream.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import cast

import numpy as np
import xarray as xr

from pipeline.codec import jsonvalues, rawcarrier
from pipeline.codec.cores import encode_threads
from pipeline.codec.corrections import add_corrections
from pipeline.codec.cube import analyse, cube_stats
from pipeline.codec.describe import channel_infos, coords_and_aux, stream_infos, variable_infos
from pipeline.codec.encoded import EncodedCube, SpoolStore
from pipeline.codec.errorbound import VIDEO_PSNR_MAX, MaxError, check_dtype, video_psnr
from pipeline.codec.groupcoder import (
    CubeContext,
    coding_gains,
    klt_moments,
)
from pipeline.codec.hedge import encode_hedged, hedge_jobs, hedge_results, worth_hedging
from pipeline.codec.landing import AIM_DB, aimed, land
from pipeline.codec.manifest import (
    BASE_VERSION,
    RAW_CARRIER_VERSION,
    Manifest,
)
from pipeline.codec.memory import block_frames, limit_heap_growth, release_free_memory
from pipeline.codec.passes import EncodedGroup, bounded_lookahead
from pipeline.codec.planning import (
    EncodeOptions,
    GroupPlan,
    candidate_groups,
    plan_groups,
)
from pipeline.codec.quality import group_psnr
from pipeline.codec.search import Choice, choose
from pipeline.codec.settings import VideoSettings

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
    on a sample and aimed just above their floor by their gain, then one pass over the
    whole cube for every group, then PSNR-target groups checked in full and those that
    missed their floor or landed above its window re-aimed from what they measured
    (:mod:`pipeline.codec.landing`)."""
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
    settings = {g.name: bounded_lookahead(_planned(g, choices), h * w) for g in groups}
    all_idx = list(range(ctx.ds.sizes[ctx.layout.time_dim]))
    jobs, hedges = hedge_jobs(
        [(g, settings[g.name]) for g in groups], set(choices), options, ctx.shape[1]
    )
    done, alts = encode_hedged(ctx, spool, jobs, hedges, all_idx, options, progress)
    pending = [choices[n].group for n in choices]  # lossless x265 too: its codes are 12-bit
    psnr = group_psnr(ctx, [done[g.name] for g in pending], all_idx) if pending else {}
    points = {name: [(done[name].settings, measured)] for name, measured in psnr.items()}
    for name, (alt, measured) in hedge_results(alts).items():
        points[name].append((alt.settings, measured))
        floor = cast(float, alt.group.psnr_target)
        if measured >= floor and (psnr[name] < floor or alt.nbytes < done[name].nbytes):
            done[name].unlink()
            done[name], psnr[name] = alt, measured
        else:
            alt.unlink()
    land(ctx, spool, pending, {n: c.model for n, c in choices.items()}, done, psnr, points, options)
    return done


def _planned(group: GroupPlan, choices: Mapping[str, Choice]) -> VideoSettings:
    """A group's settings: a PSNR-target group's chosen ones, aimed by their gain."""
    if group.name not in choices:
        return group.settings
    choice = choices[group.name]
    return aimed(choice.settings, choice.excess - AIM_DB)


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
) -> CubeContext:
    """The cube's layout and stats (one read, KLT moments included)."""
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
    return CubeContext(ds, layout, stats, moments, options.skip_empty)


def _plan(ctx: CubeContext, options: EncodeOptions) -> list[GroupPlan]:
    """The cube's band groups and each one's codec plan."""
    gains = coding_gains(ctx.moments, ctx.stats)
    return plan_groups(ctx.layout, ctx.stats, options, gains, ctx.shape)


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
    with the cube. With ``max_error``, every valid value of every continuous band is kept
    within the bound by a correction layer (:mod:`pipeline.codec.errorbound`).
    """
    options = options or EncodeOptions()
    options = replace(options, threads=encode_threads(options.threads))
    if not _bounded(options):
        return _encode(_analyse(ds, options, roles, nodata), options, cube_id, progress, workdir)
    options = replace(options, decorrelate="none")  # a KLT's float32 matmul is not bit-exact
    # the trials differ only in their PSNR floors: the cube is read for its stats once
    ctx = _analyse(ds, options, roles, nodata)
    bounds = channel_bounds(ctx, options)
    nbytes: dict[float, int] = {}
    cheapest: dict[float, EncodedCube] = {}  # the trials no other has beaten (their files)

    def cost(offset: float) -> int:
        if offset not in nbytes:
            trial = _video_options(ctx, options, bounds, offset)
            enc = _encode(ctx, trial, cube_id, progress, workdir, bounds)
            nbytes[offset] = enc.nbytes
            cheapest[offset] = enc
            least = min(nbytes.values())
            for o in [o for o in cheapest if nbytes[o] > least]:
                del cheapest[o]  # never the walk's answer: its spool is freed now
        return nbytes[offset]

    best = walk_offsets(options.max_error_offsets, cost)
    cost(best)  # a one-offset grid is walked without encoding
    return cheapest[best]


def walk_offsets(grid: Sequence[float], cost: Callable[[float], int]) -> float:
    """The offset of ``grid`` with the lowest ``cost``, assuming the cost falls toward one
    minimum (so on every cube measured, docs/BENCHMARKS.md): from the offset nearest 0
    toward the cheaper neighbour while the cost keeps falling. Two to a few costs are
    computed."""
    grid = sorted(set(grid))
    i = min(range(len(grid)), key=lambda j: abs(grid[j]))
    step = 1
    if i + 1 >= len(grid) or cost(grid[i + 1]) >= cost(grid[i]):
        step = -1
    else:
        i += 1
    while 0 <= i + step < len(grid) and cost(grid[i + step]) < cost(grid[i]):
        i += step
    return grid[i]


def _bounded(options: EncodeOptions) -> bool:
    return options.max_error is not None or any(g.max_error is not None for g in options.groups)


def channel_bounds(ctx: CubeContext, options: EncodeOptions) -> dict[str, float]:
    """The absolute bound of every continuous channel under ``max_error`` (its group's, else
    the cube's): relative bounds times the band's valid range (0 for a constant band, which
    must come back exact)."""
    own = {c: g.max_error for g in options.groups if g.max_error is not None for c in g.channels}
    bounds = {}
    for ch in ctx.layout.channels:
        spec = own.get(ch.name, options.max_error)
        if ch.role != "continuous" or spec is None:
            continue
        assert isinstance(spec, MaxError)
        check_dtype(ch.name, np.dtype(ctx.ds[ch.variable].dtype))
        st = ctx.stats.get(ch.name)
        if st is None or st.n_valid == 0:
            bounds[ch.name] = spec.value if not spec.relative else 0.0
            continue
        bounds[ch.name] = spec.absolute(st.vmin, st.vmax)
    return bounds


def _video_options(
    ctx: CubeContext, options: EncodeOptions, bounds: Mapping[str, float], offset: float
) -> EncodeOptions:
    """The video pass's PSNR floors: a uniform error of each band's bound, less ``offset``
    dB (the corrections take the rest), and never below a floor the caller set."""

    def floor(channels: Sequence[str], own: float | None) -> float | None:
        aims = [  # capped where x265's 12-bit codes still reach it (83 dB), finer or not
            min(
                video_psnr(bounds[c], ctx.stats[c].vmin, ctx.stats[c].vmax) - offset, VIDEO_PSNR_MAX
            )
            for c in channels
            if c in bounds and c in ctx.stats and ctx.stats[c].n_valid
        ]
        if not aims:
            return own
        return max(max(aims), own or 0.0)

    everything = [c.name for c in ctx.layout.channels]
    groups = tuple(
        replace(g, psnr=floor(g.channels, g.psnr)) if g.crf is None else g for g in options.groups
    )
    return replace(options, psnr=floor(everything, options.psnr), groups=groups)


def _encode(
    ctx: CubeContext,
    options: EncodeOptions,
    cube_id: str | None,
    progress: bool,
    workdir: str | os.PathLike[str] | None,
    bounds: Mapping[str, float] | None = None,
) -> EncodedCube:
    """One encode of the analysed cube: the video pass, then (``bounds``) its correction
    layer."""
    ds, groups = ctx.ds, _plan(ctx, options)
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
        # the oldest version that reads it (corrections may raise it to theirs)
        version=RAW_CARRIER_VERSION if raw else BASE_VERSION,
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
    if bounds:
        manifest = add_corrections(ds, layout, manifest, store, bounds, options.stream_keyint)
    if not manifest.cube_id:
        manifest = manifest.model_copy(update={"cube_id": _content_id(manifest)})
    return EncodedCube(manifest, store)
