"""How much and how long one download may take: the size cap, the per-file deadline and the
environment variables that set them (see :mod:`pipeline.sources.download`)."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from typing import Any

from pipeline.errors import CubecastError, SourceError

ENV_CAP = "CUBECAST_DOWNLOAD_CAP"
ENV_MIN_RATE = "CUBECAST_DOWNLOAD_MIN_RATE"
ENV_DEADLINE = "CUBECAST_DOWNLOAD_DEADLINE"


def env_size(name: str, default: int) -> int:
    from pipeline.publish.disk import parse_size

    text = os.environ.get(name)
    if not text:
        return default
    try:
        return parse_size(text.strip().removesuffix("/s"), name) or default
    except CubecastError as exc:
        raise SourceError(str(exc)) from None


def _env_seconds(name: str) -> float | None:
    text = os.environ.get(name)
    if not text:
        return None
    try:
        value = float(text.strip().removesuffix("s"))
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value <= 0:
        raise SourceError(f"{name} {text!r}: expected a positive number of seconds")
    return value


@dataclass(frozen=True)
class Limits:
    """How much and how long one file may take; see :mod:`pipeline.sources.download`."""

    cap: int = 16 << 30  # bytes, when neither the index nor the server declares a size
    min_rate: float = 100_000.0  # bytes/s that the deadline allows for after the floor
    floor: float = 60.0  # seconds every file gets whatever its size
    deadline: float | None = None  # fixed seconds per file, instead of floor + size/min_rate
    disk_reserve: int = 256 << 20  # bytes the cache's file system keeps free

    @classmethod
    def from_env(cls, **overrides: Any) -> Limits:
        """Defaults, then ``CUBECAST_DOWNLOAD_CAP`` / ``_MIN_RATE`` / ``_DEADLINE``, then
        ``overrides``."""
        base = cls()
        env = {
            "cap": env_size(ENV_CAP, base.cap),
            "min_rate": float(env_size(ENV_MIN_RATE, int(base.min_rate))),
            "deadline": _env_seconds(ENV_DEADLINE),
        }
        return replace(base, **{**env, **overrides})

    def allowed(self, declared: int | None, received: int) -> float:
        """Seconds a file may take: fixed, or the floor plus its size at ``min_rate`` (with
        no declared size, the bytes received so far)."""
        if self.deadline is not None:
            return self.deadline
        return self.floor + (declared if declared is not None else received) / self.min_rate


class DeadlineError(SourceError):
    """A download did not complete in time; its partial file is kept for the next run."""


class Deadline:
    """One file's clock: ``started`` when its download began, ``limits`` say how long."""

    def __init__(self, url: str, limits: Limits) -> None:
        self.url, self.limits = url, limits
        self.started = time.monotonic()
        self.declared: int | None = None
        self.received = 0

    def left(self) -> float:
        allowed = self.limits.allowed(self.declared, self.received)
        return allowed - (time.monotonic() - self.started)

    def error(self) -> DeadlineError:
        allowed = self.limits.allowed(self.declared, self.received)
        return DeadlineError(
            f"{self.url}: not complete after {time.monotonic() - self.started:.1f} s, past "
            f"its {allowed:.1f} s deadline ({self.received:,} bytes received; "
            f"{ENV_DEADLINE} / {ENV_MIN_RATE} set it)"
        )

    def check(self) -> float:
        left = self.left()
        if left <= 0:
            raise self.error()
        return left
