"""Codec and quantiser for a PSNR-target group, from trial encodes of a small sample.

The sample is a few runs of consecutive frames, each a mosaic of blocks from all over the
frame (about 3 % of the cube's pixels, at least 32 k and at most 2 M per band), so a trial
costs a few percent of the real encode. Each candidate codec gets a rate model from two or three
trials (:mod:`pipeline.codec.ratecontrol`), run at a faster preset where the codec names one
(``VideoCodec.trial_presets``: AV1 and VVC trials 1.5x and 2x quicker, their PSNR raised by what
the cube's preset gains at equal quantiser); the codec with the fewest predicted bytes at
its floor wins, and the whole cube is encoded once at the model's quantiser.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import numpy as np
import xarray as xr

from pipeline.codec.groupcoder import CubeContext
from pipeline.codec.passes import bounded_lookahead, encode_pass, encode_together
from pipeline.codec.planning import AUTO, EncodeOptions, GroupPlan, codec_candidates
from pipeline.codec.quality import group_psnr
from pipeline.codec.ratecontrol import (
    MARGIN_DB,
    SLOPE_PRIOR,
    RateModel,
    Trial,
    fit_rate_model,
)
from pipeline.codec.settings import VideoSettings
from pipeline.codec.videocodecs import X265_CODEC, get_codec

SAMPLE_FRACTION = 0.03
SAMPLE_MIN = 4 * 64 * 64  # pixels per band
SAMPLE_MAX = 1 << 21
RUN = 32  # consecutive frames per run: one VVC GOP, several of x265's and AV1's
MAX_RUNS = 4
BLOCK = 32  # px; 16 on frames under 128 px
MOSAIC_MIN = 64  # px per side of a sample frame: VVC's minimum
BIAS_FRAMES = 8  # frames of mosaic and cube the sample's bias is measured on
BIAS_PIXELS = BIAS_FRAMES << 20  # per band: a cube this small is compared whole
# a group's frame pixels (all bands) up to which the bias pass encodes its streams at once:
# four 1024 px x265 ultrafast streams took 1.45 s and +330 MiB together, 1.93 s and +190 apart
BIAS_TOGETHER = 4 << 20
# below this quantiser a KLT's shared step can cost more than it saves: try without it
KLT_RECHECK_Q = 2


@dataclass(frozen=True)
class Choice:
    group: GroupPlan  # the group as it will be coded (its KLT may have been dropped)
    settings: VideoSettings
    model: RateModel | None  # None: lossless, no lossy codec reaches the floor
    predicted_bytes: float = math.inf


def choose(ctx: CubeContext, spool: Path, group: GroupPlan, options: EncodeOptions) -> Choice:
    """The candidate codec and quantiser predicted to meet the group's floor in the fewest
    bytes; lossless x265 when none reaches it."""
    floor = cast(float, group.psnr_target)
    full_pixels = group.frame_pixels
    # the trials get the cube's encoder settings: libaom's default 35-frame lag on the
    # sample against the 10 a megapixel cube gets put a 1024 px twin 2 dB below its sample
    group = replace(group, settings=bounded_lookahead(group.settings, ctx.shape[0] * ctx.shape[1]))
    grid = sample_grid(ctx)
    sample = ctx if grid is None else grid.crop(ctx, group)
    target = floor + (0.0 if grid is None else sample_bias(ctx, grid, sample, spool, group, floor))
    h, w = sample.shape
    group = replace(group, frame_pixels=h * w)  # trials on small frames: one stream
    names = codec_candidates(options, group.settings.engine, floor, ctx.shape)
    with ThreadPoolExecutor(max_workers=min(len(names), os.cpu_count() or 1)) as pool:
        found = list(pool.map(lambda n: _fit(sample, spool, group, n, target), names))
    best = min((c for c in found if c is not None), key=_bytes, default=None)
    if (
        group.decorrelate == "klt"
        and options.decorrelate == AUTO
        and (best is None or cast(float, best.settings.crf) <= KLT_RECHECK_Q)
    ):
        plain = replace(group, decorrelate="none")
        codec = best.settings.codec if best else names[0]
        alt = _fit(sample, spool, plain, codec, target)
        if alt is not None and _bytes(alt) < _bytes(best):
            best = alt
    if best is None:
        lossless = replace(group.settings, codec=X265_CODEC.name, lossless=True, crf=None)
        best = Choice(group, lossless, None)
    return replace(best, group=replace(best.group, frame_pixels=full_pixels))


def step_down(settings: VideoSettings, model: RateModel | None, shortfall: float) -> VideoSettings:
    """Finer settings for a group that missed its floor by ``shortfall`` dB over the whole
    cube: as many quantiser steps as the model's slope says, then lossless x265."""
    crf = cast(float, settings.crf)
    slope = model.slope if model is not None else SLOPE_PRIOR
    steps = max(1, math.ceil((shortfall + MARGIN_DB) / slope))
    if crf > 0:
        return replace(settings, crf=max(crf - steps, 0.0))
    return replace(settings, codec=X265_CODEC.name, lossless=True, crf=None)


def sample_bias(
    ctx: CubeContext,
    grid: SampleGrid,
    sample: CubeContext,
    spool: Path,
    group: GroupPlan,
    floor: float,
) -> float:
    """How many dB the sample flatters the cube, at one quantiser of the cheapest encoder
    (x265 ultrafast). The gap is mostly the content's, so it carries over to the other
    codecs (Landsat: 1.39 dB with x265 ultrafast, 1.30 with x265 medium, 1.33 with VVC),
    though not always: Landsat's KLT group coded with VVC at QP 4 measured 0.5 dB between
    sample and cube against 1.4 here, and landed 1.7 dB above a 45 dB floor.

    A cube of up to ``BIAS_PIXELS`` per band is compared whole with the sample, so the
    sample's choice of frames is measured too (NDVI at 45 dB: 133 kB; measured on 8 of its
    own frames, the gap read 0 and the cube came out 1 dB above its floor in 142 kB). A
    larger cube is compared on ``BIAS_FRAMES`` frames, mosaic against full frames: on a
    24-day 1024 px twin the whole cube cost a fifth of the AV1 encode."""
    settings = replace(
        group.settings, codec=X265_CODEC.name, preset="ultrafast", crf=float(_prior(floor))
    )
    h, w = ctx.shape
    if ctx.ds.sizes[ctx.layout.time_dim] * h * w <= BIAS_PIXELS:
        mosaic, full = sample, ctx
    else:
        frames = grid.bias_frames()
        mosaic = grid.crop(ctx, group, frames)
        full = replace(ctx, ds=ctx.ds.isel({ctx.layout.time_dim: frames}))
    psnr = []
    for part, pixels in ((mosaic, mosaic.shape[0] * mosaic.shape[1]), (full, group.frame_pixels)):
        sized = replace(group, frame_pixels=pixels)
        apart = pixels * group.n_planes > BIAS_TOGETHER  # split streams in turn, for memory
        trial = _trial(part, spool, sized, settings, f".bias-{len(psnr)}", whole=apart)
        if trial.psnr == -math.inf:
            return 0.0
        psnr.append(trial.psnr)
    bias = psnr[0] - psnr[1]
    return bias if math.isfinite(bias) else 0.0


def _trial(
    part: CubeContext,
    spool: Path,
    group: GroupPlan,
    settings: VideoSettings,
    tag: str,
    whole: bool = False,
) -> Trial:
    """Encode ``part`` once, measure its worst channel's PSNR and size, delete the files;
    PSNR -inf where the encoder refused. ``whole``: through ``encode_pass``, which encodes
    a group split for memory one stream at a time."""
    indices = list(range(part.ds.sizes[part.layout.time_dim]))
    job = [(group, settings)]
    if whole:
        enc = encode_pass(part, spool, job, indices, tag, EncodeOptions())[group.name]
    else:
        enc = encode_together(part, spool, job, indices, tag)[group.name]
    try:
        if enc.failed is not None:
            return Trial(int(settings.crf or 0), float("-inf"), 0)
        psnr = group_psnr(part, [enc], indices)[group.name]
        return Trial(int(settings.crf or 0), psnr, enc.nbytes)
    finally:
        enc.unlink()


def _prior(target: float) -> int:
    """A first quantiser for a floor: right within a few steps for every codec here."""
    return int(min(max(round(60 - target), 0), 51))


def _bytes(choice: Choice | None) -> float:
    return math.inf if choice is None else choice.predicted_bytes


def _fit(
    sample: CubeContext, spool: Path, group: GroupPlan, codec: str, target: float
) -> Choice | None:
    base = replace(group.settings, codec=codec)

    def measure(q: int) -> Trial:
        tag = f".trial-{codec}-{group.decorrelate}-{q}"
        cheap, gain = get_codec(codec).trial_settings(replace(base, crf=float(q)))
        trial = _trial(sample, spool, group, cheap, tag)
        return replace(trial, psnr=trial.psnr + gain)

    start = _prior(target)
    found = fit_rate_model(measure, target, start, 0, get_codec(codec).max_quality)
    if found is None:
        return None
    q, model = found
    return Choice(group, replace(base, crf=float(q)), model, model.bytes_at(q))


@dataclass(frozen=True)
class SampleGrid:
    """Where the sample lies in the cube: a few runs of ``RUN`` consecutive frames (every
    frame of a short cube), so the encoder's GOP structure (VVC's QP cascade over 32
    frames) is the one the cube gets; and in each frame a mosaic of small blocks from a
    regular grid, the same blocks in every frame, so flat and busy parts are both there."""

    frames: tuple[int, ...]
    ys: np.ndarray
    xs: np.ndarray

    def crop(
        self, ctx: CubeContext, group: GroupPlan, frames: Sequence[int] | None = None
    ) -> CubeContext:
        """The group's variables on the mosaic, loaded: same stats as the cube, so it
        quantises as the whole cube does."""
        layout = ctx.layout
        frames = list(self.frames if frames is None else frames)
        variables = sorted({c.variable for c in group.channels})
        src = ctx.ds[variables]
        src = src.drop_vars(list(src.coords))
        parts = [  # a few frames at a time: a lazy source reads whole frames before cropping
            src.isel({layout.time_dim: frames[i : i + 4]})
            .isel({layout.y_dim: self.ys, layout.x_dim: self.xs})
            .load()
            for i in range(0, len(frames), 4)
        ]
        return replace(ctx, ds=xr.concat(parts, dim=layout.time_dim))

    def bias_frames(self) -> list[int]:
        """``BIAS_FRAMES`` consecutive frames of the sample's middle run."""
        mid = len(self.frames) // 2
        lo = max(0, min(mid - BIAS_FRAMES // 2, len(self.frames) - BIAS_FRAMES))
        return list(self.frames[lo : lo + BIAS_FRAMES])


def sample_grid(ctx: CubeContext) -> SampleGrid | None:
    """The sample of a cube, or None when it would be half the cube or more (the trials
    then run on the cube itself)."""
    t, (h, w) = ctx.ds.sizes[ctx.layout.time_dim], ctx.shape
    budget = min(max(SAMPLE_FRACTION * t * h * w, SAMPLE_MIN), SAMPLE_MAX)
    if budget >= t * h * w / 2:
        return None
    frames = _time_runs(t, budget)
    block = BLOCK if min(h, w) >= 4 * BLOCK else BLOCK // 2
    side = max(MOSAIC_MIN, math.isqrt(int(budget / len(frames))))
    return SampleGrid(tuple(frames), _mosaic(h, block, side), _mosaic(w, block, side))


def sample_cube(ctx: CubeContext, group: GroupPlan) -> CubeContext:
    """A small cube of the group's variables that codes like the whole one."""
    grid = sample_grid(ctx)
    return ctx if grid is None else grid.crop(ctx, group)


def _time_runs(t: int, budget: float) -> list[int]:
    """Every frame of a short cube, else runs of ``RUN`` consecutive frames spread over it:
    a VVC trial on a few frames lands several dB above what the cube gets."""
    if t <= RUN:
        return list(range(t))
    runs = int(min(MAX_RUNS, max(1, budget // (RUN * MOSAIC_MIN**2))))
    starts = np.linspace(0, t - RUN, runs).round().astype(int)
    return sorted({int(i) for s in starts for i in range(s, s + RUN)})


def _mosaic(n: int, block: int, side: int) -> np.ndarray:
    """Pixel indices along one axis: ``side // block`` blocks spread evenly over ``n``."""
    count = max(side // block, 1)
    if count * block * 2 > n:
        return np.arange(n)
    starts = np.linspace(0, n // block - 1, count).round().astype(int) * block
    return np.concatenate([np.arange(s, s + block) for s in starts])
