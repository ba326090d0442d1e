"""Landing a PSNR-target group on its floor, not a quantiser step above it.

A codec's quantiser moves in whole steps: near CRF 3 one AV1 step is worth 2 dB, and the
cube came out up to 2.25 dB above a floor (Landsat at 50 dB), decibels nobody asked for.
Between steps the group's code amplitude is the finer knob (``VideoSettings.gain``): the
codec's error in codes stays about what its quantiser makes it, so codes scaled by ``g``
move PSNR by ``GAIN_SLOPE * 20 log10(g)`` dB, and bytes as a quantiser step would for the
same dB (NDVI, AV1 CRF 9 and 10, gains 1 to 0.84: 1.10-1.14 dB of PSNR per dB of gain,
0.064-0.072 log-bytes per dB against 0.067 between the two CRFs).

The group is aimed at ``floor + AIM_DB``. The whole cube is measured after its encode; one
that lands outside ``[floor, floor + WINDOW_DB]`` is re-aimed from what was measured
(:func:`retarget`), since the sample predicts the cube only to a few tenths of a dB.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import cast

from pipeline.codec.groupcoder import CubeContext
from pipeline.codec.passes import EncodedGroup, bounded_lookahead, encode_pass
from pipeline.codec.planning import EncodeOptions, GroupPlan
from pipeline.codec.quality import group_psnr
from pipeline.codec.ratecontrol import SLOPE_PRIOR, RateModel
from pipeline.codec.settings import VideoSettings
from pipeline.codec.videocodecs import X265_CODEC, get_codec
from pipeline.errors import InvalidCubeError

GAIN_SLOPE = 1.1  # dB of PSNR per dB of gain before any is measured (see above)
SLOPES = (0.5, 2.0)  # a measured gain slope outside this is noise: clamped
MIN_GAIN = 0.5  # 6 dB: beyond it a coarser quantiser is the way down
AIM_DB = 0.25  # where in the window a group is aimed
WINDOW_DB = 0.5  # a group landing further above its floor is encoded again
# a hedged pair (pipeline.codec.hedge) is aimed this far apart around the aim, so one of the
# two lands in the window whenever the prediction is off by up to this much either way
HEDGE_DB = 0.4
# re-encodes spent on a group that met its floor but landed above the window (a miss is
# always re-encoded); the second one knows the cube's own gain slope, and one more is spent
# where two encodes bracket the window (:func:`bracketed`)
MAX_REFINES = 2

Point = tuple[VideoSettings, float]  # settings and the PSNR they measured on the whole cube


def gain_of(amplitude_db: float) -> float:
    """The gain that lowers the code amplitude by ``amplitude_db`` (none for 0 or less)."""
    return max(10 ** (-max(amplitude_db, 0.0) / 20), MIN_GAIN)


def amplitude_db(gain: float) -> float:
    return -20 * math.log10(gain)


def aimed(settings: VideoSettings, excess_db: float) -> VideoSettings:
    """``settings`` (gain 1) with the gain that gives up ``excess_db`` dB of PSNR, what its
    quantiser is predicted to land above the aim."""
    if settings.lossless or settings.crf is None:
        return settings
    return replace(settings, gain=gain_of(excess_db / GAIN_SLOPE))


def shifted(settings: VideoSettings, db: float) -> VideoSettings:
    """``settings`` moved ``db`` dB of PSNR up (positive) or down by the gain alone, no
    higher than gain 1."""
    if settings.lossless or settings.crf is None:
        return settings
    return replace(settings, gain=gain_of(amplitude_db(settings.gain) - db / GAIN_SLOPE))


def landed(psnr: float, floor: float) -> bool:
    return floor <= psnr <= floor + WINDOW_DB


def gain_slope(
    settings: VideoSettings, measured: float, points: Sequence[Point], aim: float
) -> float:
    """dB of PSNR per dB of gain at these settings' quantiser, from another whole-cube
    encode that differs in gain alone: one on the other side of ``aim`` where there is (an
    interpolation), else the nearest in gain; ``GAIN_SLOPE`` with none. The curve bends:
    on the DEC twin at 35 dB, AV1 CRF 18 measured 0.70 dB per dB over the first 1.2 dB of
    gain and 1.2 over the next 1.3 (1.16 at 40 dB; 0.65 on the hourly field with VVC)."""
    same = [
        (s, p)
        for s, p in points
        if (s.codec, s.crf) == (settings.codec, settings.crf)
        and s.gain != settings.gain
        and math.isfinite(p)
    ]
    if not same or not math.isfinite(measured):
        return GAIN_SLOPE
    across = [(s, p) for s, p in same if (p - aim) * (measured - aim) < 0]
    s, p = min(across or same, key=lambda sp: abs(math.log(sp[0].gain / settings.gain)))
    slope = (measured - p) / (amplitude_db(s.gain) - amplitude_db(settings.gain))
    return min(max(slope, SLOPES[0]), SLOPES[1])


def bracketed(points: Sequence[Point], floor: float) -> bool:
    """Whether encodes at one quantiser fell both below the floor and above the window, so
    a next aim interpolates between them."""
    by_q: dict[tuple[str, float | None], set[bool]] = {}
    for s, p in points:
        if math.isfinite(p) and not landed(p, floor):
            by_q.setdefault((s.codec, s.crf), set()).add(p > floor)
    return any(len(sides) == 2 for sides in by_q.values())


def retarget(
    settings: VideoSettings,
    model: RateModel | None,
    measured: float,
    floor: float,
    points: Sequence[Point] = (),
) -> VideoSettings:
    """Settings for ``floor + AIM_DB`` from ``settings``, which measured ``measured`` dB on
    the whole cube: by the gain alone where it can (its slope is measured, a quantiser
    step's only predicted: on the DEC twin, AV1 CRF 12 to 14 on the sample's slope landed
    under a floor it was meant to clear by 0.25 dB); else the coarsest quantiser predicted
    to reach it at gain 1 (the model's slope per step), the rest given up by the gain;
    lossless x265 when no quantiser is predicted to, or the finest one already missed."""
    if settings.lossless or settings.crf is None:
        return settings
    want = floor + AIM_DB - measured  # dB of PSNR to gain (negative: to give up)
    slope = gain_slope(settings, measured, points, floor + AIM_DB)
    held = amplitude_db(settings.gain)
    if 0 <= held - want / slope <= amplitude_db(MIN_GAIN):
        return replace(settings, gain=gain_of(held - want / slope))
    codec = get_codec(settings.codec)
    q0 = float(settings.crf)
    step_slope = model.slope if model is not None else SLOPE_PRIOR
    scale = codec.quantiser_scale

    def above(q: int) -> float:  # predicted dB above ``measured`` at (q, gain 1)
        return slope * held + step_slope * (scale.u(q0) - scale.u(q))

    fits = [q for q in range(codec.max_quality + 1) if above(q) >= want]
    if not fits or (want > 0 and q0 == 0 and settings.gain >= 1.0):
        return replace(settings, codec=X265_CODEC.name, lossless=True, crf=None, gain=1.0)
    q = max(fits)
    return replace(settings, crf=float(q), gain=gain_of((above(q) - want) / slope))


def land(
    ctx: CubeContext,
    spool: Path,
    pending: Sequence[GroupPlan],
    models: Mapping[str, RateModel | None],
    done: dict[str, EncodedGroup],
    psnr: dict[str, float],
    points: dict[str, list[tuple[VideoSettings, float]]],
    options: EncodeOptions,
) -> None:
    """Re-encode each group that missed its floor (until it meets it, down to lossless
    x265) or landed above the window (``MAX_REFINES`` times), re-aimed from the measured
    encode nearest the aim; the smallest encode that meets the floor is kept (``done`` and
    ``psnr`` updated in place)."""
    h, w = ctx.shape
    all_idx = list(range(ctx.ds.sizes[ctx.layout.time_dim]))
    refines = dict.fromkeys((g.name for g in pending), 0)
    attempt = 0
    while True:
        retry = []
        for g in pending:
            floor, measured = cast(float, g.psnr_target), psnr[g.name]
            limit = MAX_REFINES + bracketed(points[g.name], floor)
            if landed(measured, floor) or (measured > floor and refines[g.name] >= limit):
                continue
            if measured < floor:
                refuse_unreachable([g], done, psnr)
            else:
                refines[g.name] += 1
            aim = floor + AIM_DB
            nearest, at = min(points[g.name], key=lambda p: abs(p[1] - aim))
            settings = retarget(nearest, models[g.name], at, floor, points[g.name])
            retry.append((g, bounded_lookahead(settings, h * w)))
        if not retry:
            return
        attempt += 1
        encoded = encode_pass(ctx, spool, retry, all_idx, f".{attempt}", options)
        measured_now = group_psnr(ctx, [e for e in encoded.values() if e.failed is None], all_idx)
        for g, _ in retry:
            enc, before = encoded[g.name], psnr[g.name]
            now = measured_now.get(g.name, -math.inf)
            points[g.name].append((enc.settings, now))
            floor = cast(float, g.psnr_target)
            if before < floor or (now >= floor and enc.nbytes < done[g.name].nbytes):
                done[g.name].unlink()
                done[g.name], psnr[g.name] = enc, now
            else:
                enc.unlink()


def refuse_unreachable(
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
