"""The report's picture of one sample: original, decoded and error images of one frame."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline.recipe import Recipe
from pipeline.sources import Mirror, load_cube


def panel_bands(recipe: Recipe, names: Sequence[str]) -> list[str]:
    """The first three bands of the recipe's RGB group (a group named ``rgb``, else the first
    group of three or more bands, which recipes list red, green, blue first), or the first
    continuous band: what the report shows of one sample."""
    groups = [g for g in recipe.codec.groups if all(b in names for b in g.bands)]
    for g in sorted(groups, key=lambda g: g.name.lower() != "rgb"):
        if len(g.bands) >= 3:
            return list(g.bands[:3])
    continuous = [b for b in recipe.variables.continuous if b in names]
    return (continuous or list(names))[:1]


def draw_sample_panel(
    recipe: Recipe, shards: Sequence[str], mirror: Mirror, out: Path
) -> Path | None:
    """Original / decoded / error images of one frame of the first sample, so a reader of
    the report sees the quality, not only numbers. Reads one frame of each side only."""
    import numpy as np

    from pipeline.codec.decode import decode_cube
    from pipeline.publish.report import sample_panel
    from pipeline.taco.read import _open_archive, sample_encoded, sample_ids

    if not shards:
        return None
    archive, fh = _open_archive(shards[0])
    with archive, fh:
        ids = sample_ids(archive)
        if not ids:
            return None
        enc = sample_encoded(archive, ids[0], shards[0])
        m = enc.manifest
        lossy = [
            c.name
            for c in m.channels
            if c.name in m.data_vars_order and not m.channel_lossless(c.name)
        ]
        bands = panel_bands(recipe, lossy)
        if not bands:
            return None
        source = load_cube(recipe, ids[0], mirror).dataset
        n = m.n_frames
        # the clearest of a few evenly spaced frames: a cloudy frame shows little
        candidates = sorted({int(i) for i in np.linspace(0, n - 1, min(n, 7))})

        def valid(i: int) -> float:
            return float(np.isfinite(source[bands[0]].isel({m.time_dim: i}).values).mean())

        t = max(candidates, key=lambda i: (valid(i), -abs(i - n // 2)))
        original = source[bands].isel({m.time_dim: t}).load()
        decoded = decode_cube(enc, variables=bands, time=slice(t, t + 1))
    label = f"{ids[0]}, frame {t} of {n}"
    return sample_panel(original, decoded.isel({m.time_dim: 0}), bands, out, label)
