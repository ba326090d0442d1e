"""Target-quality rate control: a rate model fitted from two or three trial encodes.

Over the useful range a codec's PSNR falls nearly linearly with its quantiser (x265's CRF,
VVC's QP, AV1's CRF: about 1 dB per step at high quality), and its bytes fall nearly
log-linearly. So two trials give the quantiser for a floor and the bytes it will cost,
instead of the six or so encodes a bisection needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

SLOPE_PRIOR = 1.0  # dB per quantiser step before any trial
SLOPE_RANGE = (0.5, 3.0)  # a fitted slope outside this is encoder noise: clamp it
MAX_TRIALS = 3
# the sample, corrected for its bias, predicts x265 and VVC on the cube to a few tenths of
# a dB (bench/psnr_target.py); AV1 on a 1024 px twin came out 2 dB below its sample, and
# 0.5 did not save it a second encode, so the margin stays small (bits matter more)
MARGIN_DB = 0.3
# a fit pointing further than this from every trial gets a third trial: AV1's PSNR is convex
# in its CRF: NDVI at 50 dB, interpolated over 5 steps to 2 from a trial, came out at 49.72
# and was encoded twice; with a third trial it took VVC in one encode and 1.5 % fewer bytes
NEAR_STEPS = 1
# a chosen trial this far above the goal, next to an untried coarser quantiser: try that one
OVERSHOOT_DB = 2.0


@dataclass(frozen=True)
class Trial:
    q: int
    psnr: float  # -inf: the encoder refused this quantiser
    nbytes: int


@dataclass(frozen=True)
class RateModel:
    """PSNR and bytes as functions of the quantiser, fitted to the trials nearest a target."""

    trials: tuple[Trial, ...]
    slope: float  # dB lost per quantiser step

    def psnr_at(self, q: float) -> float:
        near = self._nearest(q)
        return near.psnr - self.slope * (q - near.q)

    def bytes_at(self, q: float) -> float:
        usable = sorted((t for t in self.trials if t.nbytes > 0), key=lambda t: abs(t.q - q))
        if len(usable) < 2 or usable[0].q == usable[1].q:
            return float(usable[0].nbytes) if usable else math.inf
        a, b = usable[0], usable[1]
        rate = (math.log(b.nbytes) - math.log(a.nbytes)) / (b.q - a.q)
        return math.exp(math.log(a.nbytes) + rate * (q - a.q))

    def quantiser_for(self, target: float, lo: int, hi: int) -> int | None:
        """Largest quantiser predicted to meet ``target``; never above one that missed."""
        finite = [t for t in self.trials if t.psnr > -math.inf]
        if not finite:
            return None
        # an exact decode (infinite PSNR) says nothing about the slope: extrapolate from the
        # nearest finite trial; with none, the coarsest exact one is the answer so far
        near = min(finite, key=lambda t: (math.isinf(t.psnr), abs(t.psnr - target), -t.q))
        if math.isinf(near.psnr):
            q = near.q
        else:
            q = math.floor(near.q + (near.psnr - target) / self.slope + 1e-9)
        first_miss = self.first_miss(target, hi)
        q = min(q, first_miss - 1)
        q = max(q, max((t.q for t in finite if target <= t.psnr and t.q < first_miss), default=q))
        if q < lo:
            return None if self.psnr_at(lo) < target else lo
        return min(q, hi)

    def first_miss(self, target: float, hi: int) -> int:
        """The finest quantiser a trial missed ``target`` at; ``hi + 1`` when none did."""
        return min((t.q for t in self.trials if t.psnr < target), default=hi + 1)

    def _nearest(self, q: float) -> Trial:
        return min((t for t in self.trials if t.psnr > -math.inf), key=lambda t: abs(t.q - q))


def _slope(a: Trial, b: Trial) -> float:
    if a.q == b.q or not (math.isfinite(a.psnr) and math.isfinite(b.psnr)):
        return SLOPE_PRIOR
    s = (a.psnr - b.psnr) / (b.q - a.q)
    return min(max(s, SLOPE_RANGE[0]), SLOPE_RANGE[1])


def fit_rate_model(
    measure: Callable[[int], Trial], target: float, start: float, lo: int, hi: int
) -> tuple[int, RateModel] | None:
    """The quantiser for ``target`` (plus ``MARGIN_DB``) and the model it came from; None
    when even ``lo`` is predicted to miss.

    The first trial is at ``start``; the second where the prior slope says the target lies;
    a third only when the fit still points more than ``NEAR_STEPS`` from every trial, or no
    trial has reached the target yet. A codec no trial saw reach the target is not trusted
    to (a KLT group's shared step caps its PSNR however fine the codec's quantiser).
    """
    goal = target + MARGIN_DB
    trials = [measure(_clamp(start, lo, hi))]
    while trials[0].psnr == -math.inf and trials[0].q > lo and len(trials) < MAX_TRIALS:
        trials.insert(0, measure(_clamp(trials[0].q - 8, lo, hi)))  # refused: go finer
    slope = SLOPE_PRIOR
    while len(trials) < MAX_TRIALS:
        model = RateModel(tuple(trials), slope)
        q = model.quantiser_for(goal, lo, hi)
        nxt = lo if q is None else q
        reached = any(t.psnr >= goal for t in trials)
        if len(trials) > 1 and reached and min(abs(t.q - nxt) for t in trials) <= NEAR_STEPS:
            break
        if nxt in {t.q for t in trials}:
            nxt = _clamp(nxt + (2 if reached else -2), lo, hi)
            if nxt in {t.q for t in trials}:
                break
        trials.append(measure(nxt))
        pair = sorted(trials, key=lambda t: abs(t.psnr - goal))[:2]
        slope = _slope(*sorted(pair, key=lambda t: t.q))
    if not any(t.psnr >= goal for t in trials):
        return None  # never seen to reach it: an extrapolation past a plateau (a KLT's step)
    model = RateModel(tuple(trials), slope)
    q = model.quantiser_for(goal, lo, hi)
    if q is not None and _overshoots(model, q, goal, hi):
        model = RateModel((*trials, measure(q + 1)), slope)
        q = model.quantiser_for(goal, lo, hi)
    return None if q is None else (q, model)


def _overshoots(model: RateModel, q: int, goal: float, hi: int) -> bool:
    """True when the quantiser chosen is a trial far above the goal and the next coarser
    one is untried and below every miss: a steep step between trials (AV1 near CRF 0 went
    from 54.3 dB at 3 to 61.8 at 1 on a 1024 px twin), worth one more trial."""
    tried = {t.q: t.psnr for t in model.trials}
    return (
        tried.get(q, -math.inf) - goal > OVERSHOOT_DB
        and q + 1 not in tried
        and q + 1 < model.first_miss(goal, hi)
    )


def _clamp(q: float, lo: int, hi: int) -> int:
    return int(min(max(round(q), lo), hi))
