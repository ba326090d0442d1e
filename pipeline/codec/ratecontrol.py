"""Target-quality rate control: the cheapest x265 CRF whose decoded result meets a PSNR floor."""

from __future__ import annotations

from collections.abc import Callable

CRF_MIN = 0
CRF_MAX = 51


def search_crf(
    quality: Callable[[float], float],
    target: float,
    start: float | None = None,
    lo: int = CRF_MIN,
    hi: int = CRF_MAX,
) -> int | None:
    """Largest integer CRF in [lo, hi] with ``quality(crf) >= target``; None if even lo fails.

    Quality falls monotonically with CRF (up to encoder noise), so a bracketing search from a
    starting guess needs about log2(52) = 6 encodes instead of 52.
    """
    cache: dict[int, float] = {}

    def ok(crf: int) -> bool:
        if crf not in cache:
            cache[crf] = quality(float(crf))
        return cache[crf] >= target

    guess = int(round(start)) if start is not None else (lo + hi) // 2
    guess = min(max(guess, lo), hi)
    if ok(guess):
        good, bad = guess, None
        step = 4
        while bad is None:
            nxt = min(good + step, hi)
            if nxt == good:
                return good
            if ok(nxt):
                good = nxt
                step *= 2
            else:
                bad = nxt
    else:
        bad, good = guess, None
        step = 4
        while good is None:
            nxt = max(bad - step, lo)
            if ok(nxt):
                good = nxt
            elif nxt == lo:
                return None
            else:
                bad = nxt
                step *= 2
    while bad - good > 1:
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good
