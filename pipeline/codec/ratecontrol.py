"""Target-quality rate control: a rate model fitted from two or three trial encodes.

Over the useful range a codec's PSNR falls nearly linearly with the log of its quantiser's
step size, and its bytes fall nearly log-linearly. x265's CRF and VVC's QP are already on
that scale (six steps double the step size: about 1 dB per step at high quality); AV1's CRF
is not (libaom's step grows about linearly with it, so near CRF 0 one step is worth 4 dB
and near 20 a third of that), so each codec names its :class:`QuantiserScale`. Two trials
then give the quantiser for a floor and the bytes it will cost, instead of the six or so
encodes a bisection needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SLOPE_PRIOR = 1.0  # dB per quantiser step before any trial
# log-bytes per dB of PSNR near the floors here (0.067-0.095 on NDVI and Landsat, every
# codec): bytes moved from a lone trial to another quantiser
RATE_PRIOR = 0.09
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
class QuantiserScale:
    """A codec's quantiser in dB of step size (``u``), on which PSNR falls about 1 dB per
    dB: the quantiser itself (``log_factor`` 0), or ``log_factor * log10(q + 1)``."""

    log_factor: float = 0.0

    def u(self, q: float) -> float:
        return q if not self.log_factor else self.log_factor * math.log10(max(q, 0.0) + 1)

    def q(self, u: float) -> float:
        return u if not self.log_factor else 10 ** (u / self.log_factor) - 1


LINEAR = QuantiserScale()


@dataclass(frozen=True)
class Trial:
    q: int
    psnr: float  # -inf: the encoder refused this quantiser
    nbytes: int


@dataclass(frozen=True)
class RateModel:
    """PSNR and bytes as functions of the quantiser, fitted to the trials nearest a target."""

    trials: tuple[Trial, ...]
    slope: float  # dB lost per dB of quantiser step (per step on a linear scale)
    scale: QuantiserScale = LINEAR

    def psnr_at(self, q: float) -> float:
        near = self._nearest(q)
        return near.psnr - self.slope * (self.scale.u(q) - self.scale.u(near.q))

    def bytes_at(self, q: float) -> float:
        usable = sorted((t for t in self.trials if t.nbytes > 0), key=lambda t: abs(t.q - q))
        if not usable:
            return math.inf
        if len(usable) < 2 or usable[0].q == usable[1].q:
            a = usable[0]
            return a.nbytes * math.exp(RATE_PRIOR * (self.psnr_at(q) - a.psnr))
        a, b = usable[0], usable[1]
        u = self.scale.u
        rate = (math.log(b.nbytes) - math.log(a.nbytes)) / (u(b.q) - u(a.q))
        return math.exp(math.log(a.nbytes) + rate * (u(q) - u(a.q)))

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
            u = self._through_three(target)
            if u is None:
                u = self.scale.u(near.q) + (near.psnr - target) / self.slope
            q = math.floor(self.scale.q(u) + 1e-9)
        first_miss = self.first_miss(target, hi)
        q = min(q, first_miss - 1)
        q = max(q, max((t.q for t in finite if target <= t.psnr and t.q < first_miss), default=q))
        if q < lo:
            return None if self.psnr_at(lo) < target else lo
        return min(q, hi)

    def _through_three(self, target: float) -> float | None:
        """Where a parabola through the three trials nearest ``target`` crosses it, between
        the nearest trials above and below it; None without such trials. A codec's curve
        bends (AV1 on a 256 px twin: 0.8 dB per dB of step from CRF 19 to 26, 1.0 from 26
        to 33), and the straight line between the outer two put CRF 26 at 44.9 dB where it
        measured 46.0."""
        finite = [t for t in self.trials if math.isfinite(t.psnr)]
        above = [t for t in finite if t.psnr >= target]
        below = [t for t in finite if t.psnr < target]
        if len(finite) < 3 or not above or not below:
            return None
        near = sorted(finite, key=lambda t: abs(t.psnr - target))[:3]
        u = [self.scale.u(t.q) for t in near]
        if len(set(u)) < 3:
            return None
        a, b, c = np.polyfit(u, [t.psnr for t in near], 2)
        ends = (
            self.scale.u(min(above, key=lambda t: t.psnr - target).q),  # nearest above
            self.scale.u(min(below, key=lambda t: target - t.psnr).q),  # nearest below
        )
        roots = np.roots([a, b, c - target]) if a else np.array([(target - c) / b])
        inside = [
            float(r.real) for r in roots if abs(r.imag) < 1e-9 and min(ends) <= r.real <= max(ends)
        ]
        return inside[0] if len(inside) == 1 else None

    def first_miss(self, target: float, hi: int) -> int:
        """The finest quantiser a trial missed ``target`` at; ``hi + 1`` when none did."""
        return min((t.q for t in self.trials if t.psnr < target), default=hi + 1)

    def _nearest(self, q: float) -> Trial:
        return min((t for t in self.trials if t.psnr > -math.inf), key=lambda t: abs(t.q - q))


def _slope(a: Trial, b: Trial, scale: QuantiserScale) -> float:
    if a.q == b.q or not (math.isfinite(a.psnr) and math.isfinite(b.psnr)):
        return SLOPE_PRIOR
    s = (a.psnr - b.psnr) / (scale.u(b.q) - scale.u(a.q))
    return min(max(s, SLOPE_RANGE[0]), SLOPE_RANGE[1])


def fit_rate_model(
    measure: Callable[[int], Trial],
    target: float,
    start: float,
    lo: int,
    hi: int,
    lone: tuple[float, float] = (0.0, 0.0),
    scale: QuantiserScale = LINEAR,
) -> tuple[int, RateModel] | None:
    """The quantiser for ``target`` (plus ``MARGIN_DB``) and the model it came from; None
    when even ``lo`` is predicted to miss.

    The first trial is at ``start``; the second where the prior slope says the target lies;
    a third only when the fit still points more than ``NEAR_STEPS`` from every trial, or no
    trial has reached the target yet. A first trial within ``lone`` (dB below, dB above) of
    the goal is enough on its own: the caller measures the model's quantiser and the next
    coarser one on the cube. Otherwise a codec no trial saw reach the target is not trusted
    to (a KLT group's shared step caps its PSNR however fine the codec's quantiser).
    """
    goal = target + MARGIN_DB
    trials = [measure(_clamp(start, lo, hi))]
    while trials[0].psnr == -math.inf and trials[0].q > lo and len(trials) < MAX_TRIALS:
        trials.insert(0, measure(_clamp(trials[0].q - 8, lo, hi)))  # refused: go finer
    slope = SLOPE_PRIOR
    while len(trials) < MAX_TRIALS:
        model = RateModel(tuple(trials), slope, scale)
        q = model.quantiser_for(goal, lo, hi)
        nxt = lo if q is None else q
        reached = any(t.psnr >= goal for t in trials)
        if _lone(trials, goal, lone):
            break
        if len(trials) > 1 and reached and min(abs(t.q - nxt) for t in trials) <= NEAR_STEPS:
            break
        if nxt in {t.q for t in trials}:
            nxt = _clamp(nxt + (2 if reached else -2), lo, hi)
            if nxt in {t.q for t in trials}:
                break
        trials.append(measure(nxt))
        pair = sorted(trials, key=lambda t: abs(t.psnr - goal))[:2]
        slope = _slope(*sorted(pair, key=lambda t: t.q), scale)
    if not (any(t.psnr >= goal for t in trials) or _lone(trials, goal, lone)):
        return None  # never seen to reach it: an extrapolation past a plateau (a KLT's step)
    model = RateModel(tuple(trials), slope, scale)
    q = model.quantiser_for(goal, lo, hi)
    if q is not None and _overshoots(model, q, goal, hi):
        model = RateModel((*trials, measure(q + 1)), slope, scale)
        q = model.quantiser_for(goal, lo, hi)
    return None if q is None else (q, model)


def _lone(trials: list[Trial], goal: float, lone: tuple[float, float]) -> bool:
    return len(trials) == 1 and -lone[0] <= trials[0].psnr - goal <= lone[1]


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
