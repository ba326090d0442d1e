"""A second final encode one quantiser step coarser, on the core a small group leaves idle.

libvvenc runs single-threaded here, and libaom and x265 find nothing to split on frames two
64 px blocks wide (NDVI's AV1 encode, Landsat's VVC and a 128 px DeepExtremeCubes twin's AV1
one measured 1.0 core of 2; AV1 on 256 px wide frames 1.4), so while such a PSNR-target
group's final stream is written the other core has nothing to do. It encodes the group once
more one quantiser step coarser; both are measured over the whole cube and the smaller that
meets the floor is kept. The sample predicts the cube to within about a step, and a step is
worth 5-8 % of the bytes at high quality, so this buys bytes with time that was idle."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import cast

from pipeline.codec.groupcoder import CubeContext
from pipeline.codec.passes import EncodedGroup, encode_pass
from pipeline.codec.planning import EncodeOptions, GroupPlan
from pipeline.codec.quality import group_psnr
from pipeline.codec.settings import VideoSettings
from pipeline.codec.videocodecs import get_codec

# frame pixels (all of a stream's tiled planes) up to which two encoders fit in memory
HEDGE_PIXELS = 1 << 20

Job = tuple[GroupPlan, VideoSettings]
Measured = dict[str, tuple[EncodedGroup, float]]  # each hedge and its worst channel's PSNR


def worth_hedging(groups: Sequence[GroupPlan], options: EncodeOptions) -> EncodeOptions:
    """``options``, with hedging off unless a core will be idle: a second core, and one
    lossy video group in the cube (two encoders already keep two cores busy)."""
    lossy = [g for g in groups if g.kind == "continuous" and not g.settings.lossless]
    if options.hedge and ((os.cpu_count() or 1) < 2 or len(lossy) != 1):
        return replace(options, hedge=False)
    return options


def one_core(group: GroupPlan, codec: str, width: int) -> bool:
    """Whether the group's encoder keeps one core busy (frames ``width`` px wide) and two of
    them fit in memory."""
    return (
        group.frame_pixels * group.n_planes <= HEDGE_PIXELS
        and width <= get_codec(codec).one_core_width
    )


def hedge_jobs(
    jobs: Sequence[Job], targeted: set[str], options: EncodeOptions, width: int
) -> list[Job]:
    """The coarser twin of each PSNR-target group that ``worth_hedging`` left hedging on
    for, coded in one stream by an encoder that keeps one core busy."""
    if not options.hedge:
        return []
    out = []
    for group, settings in jobs:
        if (
            group.name in targeted
            and not settings.lossless
            and settings.crf is not None
            and settings.crf + 1 <= get_codec(settings.codec).max_quality
            and len(group.streams(settings)) == 1
            and one_core(group, settings.codec, width)
        ):
            out.append((group, replace(settings, crf=settings.crf + 1)))
    return out


def encode_hedged(
    ctx: CubeContext,
    spool: Path,
    jobs: Sequence[Job],
    hedges: Sequence[Job],
    indices: Sequence[int],
    options: EncodeOptions,
    progress: bool,
) -> tuple[dict[str, EncodedGroup], Future[Measured] | None]:
    """The final pass and, beside it on the idle core, the hedges' pass and their PSNR
    (under way while the caller measures the final pass's)."""
    if not hedges:
        return encode_pass(ctx, spool, jobs, indices, "", options, progress), None
    pool = ThreadPoolExecutor(max_workers=1)
    alts = pool.submit(_measured_pass, ctx, spool, hedges, indices, options)
    pool.shutdown(wait=False)
    try:
        done = encode_pass(ctx, spool, jobs, indices, "", options, progress)
    except BaseException:
        if alts.exception() is None:
            for alt, _ in alts.result().values():
                alt.unlink()
        raise
    return done, alts


def _measured_pass(
    ctx: CubeContext,
    spool: Path,
    hedges: Sequence[Job],
    indices: Sequence[int],
    options: EncodeOptions,
) -> Measured:
    alts = encode_pass(ctx, spool, hedges, indices, ".hedge", options)
    ok = [a for a in alts.values() if a.failed is None]
    psnr = group_psnr(ctx, ok, indices) if ok else {}
    return {n: (a, psnr.get(n, -math.inf)) for n, a in alts.items()}


def keep_hedges(done: dict[str, EncodedGroup], alts: Future[Measured] | None) -> dict[str, float]:
    """Swap in each coarser twin that met its floor in fewer bytes (``done`` updated in
    place) and delete the others; the PSNR of the groups swapped, whose finer encode then
    needs no check."""
    kept: dict[str, float] = {}
    if alts is None:
        return kept
    try:
        measured_alts = alts.result()
    except Exception:  # the hedge is optional: the finer encode is checked as without one
        return kept
    for name, (alt, measured) in measured_alts.items():
        if (
            alt.settings.codec == done[name].settings.codec
            and measured >= cast(float, alt.group.psnr_target)
            and alt.nbytes < done[name].nbytes
        ):
            done[name].unlink()
            done[name], kept[name] = alt, measured
        else:
            alt.unlink()
    return kept
