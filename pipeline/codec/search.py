"""Codec and quantiser for a PSNR-target group, from trial encodes of a small sample.

Trials run on the sample (:mod:`pipeline.codec.sample`), at a faster preset where the codec
names one (``VideoCodec.trial_presets``: AV1 and VVC trials 1.5x and 2x quicker, their PSNR
raised by what the cube's preset gains at equal quantiser). A probe (x265 ultrafast on the
sample) places each codec's first trial near the floor; a codec far behind after it is
dropped; the others get a rate model from one to three trials
(:mod:`pipeline.codec.ratecontrol`). The codec with the fewest predicted bytes at its floor
wins, and the whole cube is encoded once at the model's quantiser (for a small group, also
one step coarser beside it: :mod:`pipeline.codec.hedge`).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

from pipeline.codec.codecchoice import codec_candidates
from pipeline.codec.groupcoder import CubeContext
from pipeline.codec.hedge import one_core
from pipeline.codec.landing import AIM_DB
from pipeline.codec.passes import bounded_lookahead, encode_pass, encode_together
from pipeline.codec.planning import AUTO, EncodeOptions, GroupPlan
from pipeline.codec.quality import group_psnr
from pipeline.codec.ratecontrol import (
    MARGIN_DB,
    RATE_PRIOR,
    RateModel,
    Trial,
    fit_rate_model,
)
from pipeline.codec.sample import BIAS_FRAMES, SampleGrid, sample_grid
from pipeline.codec.settings import VideoSettings
from pipeline.codec.videocodecs import X265_CODEC, get_codec

BIAS_PIXELS = BIAS_FRAMES << 20  # per band: a cube this small is compared whole
# a group's frame pixels (all bands) up to which the bias pass encodes its streams at once:
# four 1024 px x265 ultrafast streams took 1.45 s and +330 MiB together, 1.93 s and +190 apart
BIAS_TOGETHER = 4 << 20
# below this quantiser a KLT's shared step can cost more than it saves: try without it
KLT_RECHECK_Q = 2
# a lone trial this near the goal is enough when the final encode is hedged one step
# coarser (pipeline.codec.hedge): the model's slope is off by a third at most, half a dB here
LONE_DB = 1.5
# a codec whose first trial, so compared, needs this many times the best one's bytes is
# dropped (x265 on Landsat at 45 dB: 1.45x)
CONTENDER_RATIO = 1.25


@dataclass(frozen=True)
class Choice:
    group: GroupPlan  # the group as it will be coded (its KLT may have been dropped)
    settings: VideoSettings
    model: RateModel | None  # None: lossless, no lossy codec reaches the floor
    predicted_bytes: float = math.inf  # at the floor plus AIM_DB (pipeline.codec.landing)
    excess: float = 0.0  # dB the cube is predicted to land above its floor at gain 1


def choose(ctx: CubeContext, spool: Path, group: GroupPlan, options: EncodeOptions) -> Choice:
    """The candidate codec and quantiser predicted to meet the group's floor in the fewest
    bytes; lossless x265 when none reaches it."""
    full_pixels = group.frame_pixels
    # the trials get the cube's encoder settings: libaom's default 35-frame lag on the
    # sample against the 10 a megapixel cube gets put a 1024 px twin 2 dB below its sample
    group = replace(group, settings=bounded_lookahead(group.settings, ctx.shape[0] * ctx.shape[1]))
    grid = sample_grid(ctx)
    sample = ctx if grid is None else grid.crop(ctx, group)
    h, w = sample.shape
    small = replace(group, frame_pixels=h * w)  # trials on small frames: one stream
    names = codec_candidates(
        options, group.settings.engine, cast(float, group.psnr_target), ctx.shape
    )
    found, target = _fits(ctx, spool, group, grid, sample, small, names, options)
    best = min((c for c in found if c is not None), key=_bytes, default=None)
    if (
        group.decorrelate == "klt"
        and options.decorrelate == AUTO
        and (best is None or cast(float, best.settings.crf) <= KLT_RECHECK_Q)
    ):
        plain = replace(small, decorrelate="none")
        codec = best.settings.codec if best else names[0]
        alt = _fit(sample, spool, plain, codec, target, None, _lone(ctx, plain, codec, options))
        if alt is not None and _bytes(alt) < _bytes(best):
            best = alt
    if best is None:
        lossless = replace(group.settings, codec=X265_CODEC.name, lossless=True, crf=None)
        best = Choice(small, lossless, None)
    return replace(best, group=replace(best.group, frame_pixels=full_pixels))


def _fits(
    ctx: CubeContext,
    spool: Path,
    group: GroupPlan,
    grid: SampleGrid | None,
    sample: CubeContext,
    small: GroupPlan,
    names: list[str],
    options: EncodeOptions,
) -> tuple[list[Choice | None], float]:
    """Each contending codec's fit, and the target on the sample (the floor plus the
    sample's bias).

    A probe (x265 ultrafast on the sample: the sample's side of the bias pass) says how
    hard the content is, so each codec's first trial lands near the floor, often near
    enough to be the only one; the first trials run beside the cube's side of the bias
    pass, which only the fits need."""
    floor = cast(float, group.psnr_target)
    parts = _bias_parts(ctx, grid, sample, group)
    lones = {n: _lone(ctx, group, n, options) for n in names}
    cores = options.threads or os.cpu_count() or 1  # a worker's share where cubes run side by side
    with ThreadPoolExecutor(max_workers=min(len(names) + 1, cores)) as pool:
        cube_side = None
        if grid is not None:
            cube_side = pool.submit(_bias_trial, spool, group, floor, parts[1], "cube")
        probe = _bias_trial(spool, group, floor, parts[0], "sample")
        firsts = {
            n: pool.submit(_measure, sample, spool, small, n, _start(n, floor, lones[n], probe))
            for n in names
        }
        target = floor + _bias(probe, None if cube_side is None else cube_side.result())
        contenders = _contenders({n: f.result() for n, f in firsts.items()}, target + MARGIN_DB)
        found = list(
            pool.map(
                lambda n: _fit(sample, spool, small, n, target, firsts[n], lones[n]), contenders
            )
        )
    return found, target


def _contenders(firsts: dict[str, Trial], goal: float) -> list[str]:
    """The codecs whose first trial, moved to the goal at ``RATE_PRIOR``, is within
    ``CONTENDER_RATIO`` of the best in bytes: the others are not worth a second trial."""
    at_goal = {
        n: t.nbytes * math.exp(RATE_PRIOR * (goal - t.psnr))
        for n, t in firsts.items()
        if math.isfinite(t.psnr) and t.nbytes > 0
    }
    if not at_goal:
        return list(firsts)
    best = min(at_goal.values())
    return [n for n in firsts if n not in at_goal or at_goal[n] <= CONTENDER_RATIO * best]


def _lone(
    ctx: CubeContext, group: GroupPlan, codec: str, options: EncodeOptions
) -> tuple[float, float]:
    """dB below and above the goal within which a lone trial is enough: where the final
    encode is hedged one step coarser (:mod:`pipeline.codec.hedge`) the model's slope need
    not be measured, the cube measures two quantisers; below the goal only without a KLT,
    whose shared step can cap PSNR where no trial looked."""
    if not (options.hedge and one_core(group, codec, ctx.shape[1])):
        return (0.0, 0.0)
    return (0.0 if group.decorrelate == "klt" else LONE_DB, LONE_DB)


def _start(codec: str, floor: float, lone: tuple[float, float], probe: Trial) -> int:
    """A codec's first quantiser: aimed at the middle of its lone trial's window above the
    floor, where its PSNR plus its quantiser in dB of step (``quantiser_scale``) is the
    probe's (x265 ultrafast: PSNR plus CRF) moved by its measured offset
    (``VideoCodec.probe_offset_db``)."""
    c = get_codec(codec)
    aim = floor + MARGIN_DB + (lone[1] - lone[0]) / 2
    if not math.isfinite(probe.psnr):
        return _prior(aim)
    u = probe.psnr + probe.q + c.probe_offset_db - aim
    return int(min(max(round(c.quantiser_scale.q(u)), 0), c.max_quality))


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
    parts = _bias_parts(ctx, grid, sample, group)
    probe = _bias_trial(spool, group, floor, parts[0], "sample")
    return _bias(probe, _bias_trial(spool, group, floor, parts[1], "cube"))


Part = tuple[CubeContext, int]  # a part of the cube and its frame pixels


def _bias_parts(
    ctx: CubeContext, grid: SampleGrid | None, sample: CubeContext, group: GroupPlan
) -> tuple[Part, Part]:
    """The sample's side and the cube's side of the bias pass (no grid: the sample is the
    cube, and only its side, the probe, is encoded)."""
    h, w = ctx.shape
    if grid is None or ctx.ds.sizes[ctx.layout.time_dim] * h * w <= BIAS_PIXELS:
        mosaic, full = sample, ctx
    else:
        frames = grid.bias_frames()
        mosaic = grid.crop(ctx, group, frames)
        full = replace(ctx, ds=ctx.ds.isel({ctx.layout.time_dim: frames}))
    return (mosaic, mosaic.shape[0] * mosaic.shape[1]), (full, group.frame_pixels)


def _bias_trial(spool: Path, group: GroupPlan, floor: float, part: Part, side: str) -> Trial:
    """One side of the bias pass: x265 ultrafast at the floor's prior quantiser."""
    settings = replace(
        group.settings, codec=X265_CODEC.name, preset="ultrafast", crf=float(_prior(floor))
    )
    cube, pixels = part
    sized = replace(group, frame_pixels=pixels)
    apart = pixels * group.n_planes > BIAS_TOGETHER  # split streams in turn, for memory
    return _trial(cube, spool, sized, settings, f".bias-{side}", whole=apart)


def _bias(probe: Trial, cube_side: Trial | None) -> float:
    """The probe's PSNR less the cube side's; 0 with no cube side or when either refused."""
    if cube_side is None:
        return 0.0
    bias = probe.psnr - cube_side.psnr
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


def _measure(sample: CubeContext, spool: Path, group: GroupPlan, codec: str, q: int) -> Trial:
    """A trial of ``codec`` at ``q`` on the sample, at its trial preset, its PSNR raised by
    what the cube's preset gains."""
    base = replace(group.settings, codec=codec, crf=float(q))
    cheap, gain = get_codec(codec).trial_settings(base)
    trial = _trial(sample, spool, group, cheap, f".trial-{codec}-{group.decorrelate}-{q}")
    return replace(trial, psnr=trial.psnr + gain)


def _fit(
    sample: CubeContext,
    spool: Path,
    group: GroupPlan,
    codec: str,
    target: float,
    first: Future[Trial] | None = None,
    lone: tuple[float, float] = (0.0, 0.0),
) -> Choice | None:
    """The codec's quantiser and predicted bytes at ``target``. ``first``: its first trial,
    under way; ``lone``: how near the goal (below, above) a lone trial is enough."""
    begun = None if first is None else first.result()

    def measure(q: int) -> Trial:
        if begun is not None and q == begun.q:
            return begun
        return _measure(sample, spool, group, codec, q)

    start = _prior(target) if begun is None else begun.q
    c = get_codec(codec)
    found = fit_rate_model(measure, target, start, 0, c.max_quality, lone, c.quantiser_scale)
    if found is None:
        return None
    q, model = found
    settings = replace(group.settings, codec=codec, crf=float(q))
    excess = model.psnr_at(q) - target
    # compared at the aim, where the gain will put it: a codec with a quantiser step just
    # above the floor has no edge over one whose nearest step is a dB higher
    at_aim = model.bytes_at(q) * math.exp(-RATE_PRIOR * max(excess - AIM_DB, 0.0))
    return Choice(group, settings, model, at_aim, excess)
