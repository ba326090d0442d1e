"""How much memory one decode may ask for, checked before anything is allocated.

A manifest declares the sizes a reader allocates (frames x planes x H x W for each
stream, every output array, coordinates); a stored archive member declares its length. A
few kilobytes of crafted file can declare gigabytes, so every declared size is checked
against a budget first: ``$CUBECAST_DECODE_BUDGET`` (bytes, or with a unit: ``512M``,
``4GiB``, ``2G``), else half of the machine's physical memory (at least 1 GiB; 4 GiB where
it cannot be read). A decode over the budget is a one-line :class:`DecodeBudgetError`; a
cube that is legitimately larger is read window by window (``iter_decode``) or with a
larger budget.
"""

from __future__ import annotations

import os
import re

from pipeline.errors import CubecastError

ENV = "CUBECAST_DECODE_BUDGET"
GIB = 1 << 30
FALLBACK = 4 * GIB
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class DecodeBudgetError(CubecastError):
    """A decode would allocate more than the decode budget (a crafted or huge cube)."""


def parse_size(text: str) -> int:
    """``"512M"``, ``"4GiB"``, ``"2g"``, ``"1073741824"`` -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not match:
        raise CubecastError(
            f"{ENV}={text!r}: not a size (bytes, or a number with K, M, G or T, e.g. 4G)"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def decode_budget() -> int:
    """Bytes one decode may allocate: ``$CUBECAST_DECODE_BUDGET``, else half of physical
    memory (at least 1 GiB)."""
    text = os.environ.get(ENV, "").strip()
    if text:
        return parse_size(text)
    phys = physical_memory()
    return FALLBACK if not phys else max(GIB, phys // 2)


def human(n: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def check(need: int, source: str, what: str, budget: int | None = None) -> None:
    """Refuse ``need`` bytes over the budget, in one line naming ``source`` and ``what``."""
    budget = decode_budget() if budget is None else budget
    if need > budget:
        raise DecodeBudgetError(
            f"{source}: {what} needs {human(need)}, over the decode budget of {human(budget)} "
            f"(decode fewer frames or variables at a time, or raise ${ENV})"
        )
