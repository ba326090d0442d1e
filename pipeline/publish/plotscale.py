"""Axis limits and labels of the report's plots: the spread the data really has, readable.

Matplotlib's auto-limits zoom into whatever spread there is: cubes encoded alike at
0.7708-0.7727 bpppb filled the whole axis, read off an offset label, and looked as
different as cubes at 0.2 and 2 bpppb would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

PSNR_SPAN = 6.0  # dB: the least a PSNR axis spans, so a 0.1 dB spread looks like one
RATE_SPAN = 0.3  # the least a bpppb axis spans, as a fraction of the rate


def axis_limits(
    values: Sequence[float],
    include: Sequence[float] = (),
    min_span: float = 0.0,
    rel_span: float = 0.0,
    pad: float = 0.08,
    floor: float | None = None,
) -> tuple[float, float]:
    """Limits over ``values`` and ``include`` (a required-PSNR line), at least ``min_span``
    and ``rel_span`` times their magnitude wide, padded, not below ``floor``: near-constant
    values look as close as they are, and the line is always on the plot."""
    xs = [float(x) for x in (*values, *include) if math.isfinite(x)]
    if not xs:
        return (0.0, 1.0)
    lo, hi = min(xs), max(xs)
    span = max(hi - lo, min_span, rel_span * max(abs(lo), abs(hi)), 1e-9)
    if hi - lo < span:  # widen about the middle
        mid = (lo + hi) / 2
        lo, hi = mid - span / 2, mid + span / 2
    lo, hi = lo - pad * span, hi + pad * span
    if floor is not None and lo < floor:
        lo, hi = floor, max(hi, floor + span * (1 + pad))
    return lo, hi


def plain_ticks(ax: Any, axis: str = "both") -> None:
    """Tick labels in the data's own units: no offset or scientific notation."""
    ax.ticklabel_format(axis=axis, style="plain", useOffset=False)


def point_labels(
    points: dict[str, tuple[float, float]], xlim: tuple[float, float], ylim: tuple[float, float]
) -> list[tuple[tuple[float, float], str]]:
    """One label per spot of the plot (a 2 % cell): cubes on the same spot share it, "a (+3
    more)", instead of their names printed over each other."""
    spots: dict[tuple[int, int], list[str]] = {}
    for sid, (x, y) in points.items():
        cell = (
            round((x - xlim[0]) / (xlim[1] - xlim[0]) * 50),
            round((y - ylim[0]) / (ylim[1] - ylim[0]) * 50),
        )
        spots.setdefault(cell, []).append(sid)
    return [
        (points[ids[0]], ids[0][:24] + (f" (+{len(ids) - 1} more)" if len(ids) > 1 else ""))
        for ids in spots.values()
    ]
