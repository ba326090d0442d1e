"""Whether a source tree is the real archive or a synthetic twin of it.

A twin writer leaves ``SYNTHETIC.json`` at the tree's root (the generator, its seed and
arguments, the dataset it imitates), listed in ``SHA256SUMS`` like every other file, so an
HTTP or fsspec mirror of a twin says what it is too. The dataset card reads it: a dataset
made from a twin must say so instead of repeating the real archive's claims.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import SourceError
from pipeline.sources.mirror import Mirror

MARKER = "SYNTHETIC.json"
MAX_MARKER_BYTES = 64 << 10  # a few lines of JSON; anything larger is not a marker


@dataclass(frozen=True)
class Synthetic:
    """What generated a synthetic source tree."""

    generator: str  # module.function that wrote it
    seed: int
    imitates: str  # the real dataset whose layout it copies
    params: dict[str, Any] = field(default_factory=dict)  # its other arguments

    def to_dict(self) -> dict[str, Any]:
        return {
            "synthetic": True,
            "generator": self.generator,
            "seed": self.seed,
            "imitates": self.imitates,
            "params": self.params,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Synthetic:
        if d.get("synthetic") is not True:
            raise ValueError("'synthetic' is not true")
        params = d.get("params") or {}
        if not isinstance(params, dict):
            raise ValueError("'params' is not a table")
        seed = d["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError("'seed' is not an integer")
        return cls(str(d["generator"]), seed, str(d["imitates"]), params)


def write_marker(
    root: str | os.PathLike[str],
    generator: Callable[..., Any],
    imitates: str,
    seed: int,
    **params: Any,
) -> Path:
    """``root/SYNTHETIC.json`` naming ``generator`` (written before ``SHA256SUMS``)."""
    name = f"{generator.__module__}.{generator.__qualname__}"
    text = json.dumps(Synthetic(name, seed, imitates, params).to_dict(), indent=1, sort_keys=True)
    path = Path(root) / MARKER
    part = path.with_name(path.name + ".part")
    part.write_text(text + "\n")
    part.replace(path)
    return path


def read_marker(mirror: Mirror) -> Synthetic | None:
    """The twin's record, or ``None`` for a tree without one (the real archive)."""
    if MARKER not in mirror.list(MARKER):
        return None
    path = mirror.fetch(MARKER)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MARKER_BYTES + 1)
        if len(raw) > MAX_MARKER_BYTES:
            raise ValueError(f"larger than {MAX_MARKER_BYTES:,} bytes")
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return Synthetic.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SourceError(
            f"{mirror.location}/{MARKER}: not a synthetic-twin record "
            f"({exc.__class__.__name__}: {str(exc)[:120]})"
        ) from None
