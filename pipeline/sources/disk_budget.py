"""The disk a download may take: a :class:`DiskBudget` (``max_disk``) for the folder the
cache lives in, and the free space its file system keeps in reserve."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import SourceError
from pipeline.sources.limits import Limits, env_size

ENV_MAX_CACHE = "CUBECAST_MAX_CACHE"


@dataclass(frozen=True)
class DiskBudget:
    """At most ``limit`` bytes on disk under ``root`` (a ``max_disk``): a download that would
    pass it is refused before it starts, or stopped, with its partial file removed."""

    root: Path
    limit: int

    def used(self) -> int:
        from pipeline.publish.disk import used_bytes

        return used_bytes(self.root) if self.root.exists() else 0

    def refuse(self, url: str, need: int) -> SourceError:
        return SourceError(
            f"{url}: {need:,} more bytes would take {self.root} past its disk budget of "
            f"{self.limit:,} bytes (max_disk); partial file removed"
        )


def cache_budget(root: str | os.PathLike[str]) -> DiskBudget | None:
    """``CUBECAST_MAX_CACHE`` (a size like ``20GB``) as a budget for the cache ``root``."""
    if not os.environ.get(ENV_MAX_CACHE):
        return None
    return DiskBudget(Path(root), env_size(ENV_MAX_CACHE, 0))


class DiskGuard:
    """The checks made while bytes land in a ``.part`` file: disk budget and free space."""

    EVERY = 8 << 20  # bytes between looks at the disk

    def __init__(self, url: str, part: Path, budget: DiskBudget | None, limits: Limits) -> None:
        self.url, self.part, self.budget, self.limits = url, part, budget, limits
        self.since = 0
        self.base = budget.used() if budget else 0

    def check_ahead(self, need: int) -> None:
        if self.budget is not None and self.base + need > self.budget.limit:
            raise self.budget.refuse(self.url, need)
        self._free(need)

    def _free(self, need: int) -> None:
        try:
            free = shutil.disk_usage(self.part.parent).free
        except OSError:
            return
        if free - min(need, self.EVERY) < self.limits.disk_reserve:
            raise SourceError(
                f"{self.url}: the file system of {self.part.parent} has {free:,} bytes free, "
                f"under the {self.limits.disk_reserve:,} kept in reserve; partial file removed"
            )

    def __call__(self, n: int) -> None:
        self.base += n
        self.since += n
        if self.budget is not None and self.base > self.budget.limit:
            raise self.budget.refuse(self.url, n)
        if self.since >= self.EVERY:
            self.since = 0
            self.base = self.budget.used() if self.budget else 0
            if self.budget is not None and self.base > self.budget.limit:
                raise self.budget.refuse(self.url, n)
            self._free(0)
