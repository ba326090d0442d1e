"""The report's picture of one sample: original, decoded and error images of one frame."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from pipeline.codec.cube import NODATA_ATTRS
from pipeline.recipe import Recipe
from pipeline.sources import Mirror, load_cube

if TYPE_CHECKING:
    from pipeline.publish.verify import Verification

CANDIDATES = 12  # evenly spaced frames the picture is chosen from: about one a month
PICK_PIXELS = 1 << 14  # pixels per frame and band the choice is measured on (memory)
MISSING_SLACK = 0.05  # a frame may miss this much more of its pixels than the clearest one


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


def worst_band(
    v: Verification | None, sample: str, names: Sequence[str]
) -> tuple[str, float] | None:
    """The sample's lossy band with the lowest verified PSNR, among ``names``: the error image
    shows it, as its errors are the largest a user of the data meets in this sample."""
    checks = [
        c
        for c in (v.checks if v is not None else [])
        if c.sample == sample and c.role == "continuous" and c.band in names
    ]
    finite = [c for c in checks if math.isfinite(c.psnr)]
    if not finite:
        return None
    worst = min(finite, key=lambda c: c.psnr)
    return worst.band, worst.psnr


def representative_frame(frames: np.ndarray, slack: float = MISSING_SLACK) -> int:
    """The index of the frame that shows the sample as it usually looks.

    ``frames`` is (frame, band, pixels...) with missing pixels as NaN. Only frames missing at
    most ``slack`` more of their pixels than the clearest one take part (a cloud-masked frame
    shows little). Of those, the one with the smallest cost, averaged over the bands, wins:

    - the fraction of its pixels in the brightest tenth of all of them pooled, or the darkest
      2 %: snow, cloud, saturation and deep shadow, which hide the ground and which a
      stretch clips to flat white or black;
    - the distance of its median from the median of the frames' medians, in units of the
      pooled 2-98 % range: a typical brightness, not the brightest or darkest date;
    - one minus the fraction of its pixels in the mid-tones (10-90 %) of its own 2-98 %
      stretch, the one it is shown with: a frame that is flat, or dark ground beside a few
      bright clouds, shows little structure once stretched.

    Ties go to the clearer, then the earlier frame. Looking at missing pixels only picked a
    January frame of saturated snow; on the Landsat sample data this rule picks clear
    spring and summer scenes and puts cloud-speckled ones last.
    """
    a = np.asarray(frames, dtype=np.float64)
    a = a.reshape(a.shape[0], a.shape[1] if a.ndim > 1 else 1, -1)
    if a.shape[0] <= 1 or a.shape[2] == 0:
        return 0
    valid = np.isfinite(a).all(axis=1).mean(axis=1)  # (frame,)
    if valid.max() == 0:
        return 0
    ok = np.flatnonzero(valid >= valid.max() - slack)
    cost = np.zeros(len(ok))
    with np.errstate(invalid="ignore", divide="ignore"):
        for band in a[ok].transpose(1, 0, 2):  # (frame, pixels) of one band
            cost += _band_cost(band)
    order = sorted(range(len(ok)), key=lambda i: (round(float(cost[i]), 9), -valid[ok[i]], i))
    return int(ok[order[0]])


def _band_cost(band: np.ndarray) -> np.ndarray:
    """Tails + brightness offset + lack of mid-tones of each frame (row) of one band."""
    finite = np.isfinite(band)
    if not finite.any():
        return np.zeros(len(band))
    lo, med, bright, hi = np.percentile(band[finite], [2, 50, 90, 98])
    n = np.maximum(finite.sum(axis=1), 1)
    tails = ((band <= lo) | (band >= bright)).sum(axis=1) / n if bright > lo else 0.0
    rows = [r[np.isfinite(r)] for r in band]
    meds = np.array([np.median(r) if r.size else med for r in rows])
    offset = np.abs(meds - np.median(meds)) / (hi - lo if hi > lo else 1.0)
    own = np.array([np.percentile(r, [2, 98]) if r.size else (0.0, 0.0) for r in rows])
    width = np.where(own[:, 1] > own[:, 0], own[:, 1] - own[:, 0], np.inf)
    shown = (band - own[:, :1]) / width[:, None]  # 0 everywhere for a flat frame
    mid = ((shown > 0.1) & (shown < 0.9)).sum(axis=1) / n
    return tails + offset + (1 - mid)


def _as_float(da: xr.DataArray, like: xr.DataArray | None = None) -> np.ndarray:
    """Values as floats with the variable's nodata (of ``like``, the source, when given) as
    NaN: a nodata 0 is a missing pixel, not the darkest one of the stretch."""
    a = np.asarray(da.values, dtype=np.float64)
    ref = da if like is None else like
    for key in NODATA_ATTRS:
        nd = ref.attrs.get(key, ref.encoding.get(key))
        if nd is not None and np.size(nd) == 1 and np.isfinite(float(nd)):
            a[a == float(nd)] = np.nan
    return a


def _masked(ds: xr.Dataset, like: xr.Dataset) -> xr.Dataset:
    return ds.assign({k: (ds[k].dims, _as_float(ds[k], like[k])) for k in ds.data_vars})


def pick_frame(source: xr.Dataset, bands: Sequence[str], time_dim: str) -> int:
    """The :func:`representative_frame` of a few evenly spaced frames, each read on its own
    and thinned to about ``PICK_PIXELS`` pixels, so a large cube is never read whole."""
    n = source.sizes[time_dim]
    candidates = sorted({int(i) for i in np.linspace(0, n - 1, min(n, CANDIDATES))})
    rows = []
    for i in candidates:
        frame = source[list(bands)].isel({time_dim: i})
        planes = [_as_float(frame[b]).ravel() for b in bands]
        step = max(1, planes[0].size // PICK_PIXELS)
        rows.append(np.stack([p[::step] for p in planes]))
    return candidates[representative_frame(np.stack(rows))]


def draw_sample_panel(
    recipe: Recipe,
    shards: Sequence[str],
    mirror: Mirror,
    out: Path,
    verification: Verification | None = None,
) -> Path | None:
    """Original / decoded / error images of one representative frame of the first sample, so
    a reader of the report sees the quality, not only numbers. The error image shows the
    sample's worst band by ``verification`` (else the worst shown band of the frame). Reads
    a few thinned frames to choose one, then reads and decodes that frame of the shown bands
    and the worst one only."""
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
        worst = worst_band(verification, ids[0], lossy)
        read = bands + [worst[0]] if worst and worst[0] not in bands else bands
        source = load_cube(recipe, ids[0], mirror).dataset
        t = pick_frame(source, bands, m.time_dim)
        original = source[read].isel({m.time_dim: t}).load()
        decoded = decode_cube(enc, variables=read, time=slice(t, t + 1)).isel({m.time_dim: 0})
    label = f"{ids[0]}, frame {t} of {m.n_frames}"
    original, decoded = _masked(original, original), _masked(decoded[read], original)
    return sample_panel(original, decoded, bands, out, label, worst=worst)
