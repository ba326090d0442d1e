"""The sample rate-model trials run on: a few runs of consecutive frames, each a mosaic of
blocks from all over the frame (about 3 % of the cube's pixels, at least 32 k and at most
2 M per band; frames never under 64 x 64 px, VVC's minimum, and runs of a VVC GOP but on
small cubes), so a trial costs a few percent of the real encode."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import xarray as xr

from pipeline.codec.groupcoder import CubeContext
from pipeline.codec.planning import GroupPlan

SAMPLE_FRACTION = 0.03
SAMPLE_MIN = 4 * 64 * 64  # pixels per band
SAMPLE_MAX = 1 << 21
RUN = 32  # consecutive frames per run: one VVC GOP, several of x265's and AV1's
MAX_RUNS = 4
# a small cube's sample is one run of 16 frames: NDVI (68 x 101 x 100) and Landsat's 19
# frames measured trials half as long, and the sample's errors against the cube within the
# same 0.8 dB with every codec as on 32 frames (the bias pass and the hedged final take up
# the rest)
SHORT_RUN = 16
SHORT_RUN_RATIO = 4
BLOCK = 32  # px; 16 on frames under 128 px
MOSAIC_MIN = 64  # px per side of a sample frame: VVC's minimum
BIAS_FRAMES = 8  # frames of mosaic and cube the sample's bias is measured on


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
    """Runs of ``RUN`` consecutive frames spread over the cube (a VVC trial on a few frames
    lands several dB above what the cube gets), or one run of ``SHORT_RUN`` where a whole
    run of the smallest mosaic would be many times the budget (a small cube)."""
    run = SHORT_RUN if RUN * MOSAIC_MIN**2 > SHORT_RUN_RATIO * budget else RUN
    if t <= run:
        return list(range(t))
    runs = int(min(MAX_RUNS, max(1, budget // (run * MOSAIC_MIN**2))))
    starts = np.linspace(0, t - run, runs).round().astype(int)
    return sorted({int(i) for s in starts for i in range(s, s + run)})


def _mosaic(n: int, block: int, side: int) -> np.ndarray:
    """Pixel indices along one axis: ``side // block`` blocks spread evenly over ``n``."""
    count = max(side // block, 1)
    if count * block >= n:
        return np.arange(n)
    starts = np.linspace(0, n // block - 1, count).round().astype(int) * block
    return np.concatenate([np.arange(s, s + block) for s in starts])
