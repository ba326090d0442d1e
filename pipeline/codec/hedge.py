"""A second final encode a little coarser, on the core a small group leaves idle.

libvvenc runs single-threaded here, and libaom and x265 find nothing to split on frames two
64 px blocks wide (NDVI's AV1 encode, Landsat's VVC and a 128 px DeepExtremeCubes twin's AV1
one measured 1.0 core of 2; AV1 on 256 px wide frames 1.4), so while such a PSNR-target
group's final stream is written the other core has nothing to do. It encodes the group once
more ``HEDGE_DB`` lower by its gain (:mod:`pipeline.codec.landing`), the pair aimed either
side of the aim; both are measured over the whole cube and the smaller that meets the floor
is kept. The sample predicts the cube to a few tenths of a dB, so one of the two usually
lands in the window above the floor and no third encode is needed: time that was idle buys
precision and bytes."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from pipeline.codec.groupcoder import CubeContext
from pipeline.codec.landing import HEDGE_DB, shifted
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
) -> tuple[list[Job], list[Job]]:
    """``jobs`` with each PSNR-target group that ``worth_hedging`` left hedging on for
    (coded in one stream by an encoder that keeps one core busy) aimed ``HEDGE_DB / 2``
    higher, and their twins aimed as much lower."""
    if not options.hedge:
        return list(jobs), []
    out, hedges = [], []
    for group, settings in jobs:
        if (
            group.name in targeted
            and not settings.lossless
            and settings.crf is not None
            and len(group.streams(settings)) == 1
            and one_core(group, settings.codec, width)
        ):
            out.append((group, shifted(settings, HEDGE_DB / 2)))
            hedges.append((group, shifted(settings, -HEDGE_DB / 2)))
        else:
            out.append((group, settings))
    return out, hedges


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


def hedge_results(alts: Future[Measured] | None) -> Measured:
    """The hedges and their worst channel's PSNR; none where there were none or their pass
    failed (the hedge is optional: the finer encode stands alone)."""
    if alts is None:
        return {}
    try:
        return alts.result()
    except Exception:
        return {}
