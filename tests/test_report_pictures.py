"""The report's pictures teach something: a representative frame (not saturated snow, not a
cloud-masked date), an error image that names its band, and plot axes that show the real
spread of the cubes instead of zooming into a near-constant cloud."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from pipeline.publish import report
from pipeline.publish.panel import pick_frame, representative_frame, worst_band
from pipeline.publish.plotscale import PSNR_SPAN, RATE_SPAN, axis_limits
from pipeline.publish.verify import BandCheck, Verification


def _ground(seed: int, size: int = 32) -> np.ndarray:
    """(band, y, x) reflectances of fields and roads: texture between 0.05 and 0.35."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    base = 0.2 + 0.1 * np.sin(6 * x + seed) * np.cos(5 * y)
    return np.stack([base + 0.02 * b + rng.normal(0, 0.02, base.shape) for b in range(3)])


def _cube() -> np.ndarray:
    """(frame, band, y, x): 0 saturated snow, 1 cloud-masked (60 % NaN), 2-5 ground."""
    frames = np.stack([_ground(i) for i in range(6)])
    frames[0] = np.minimum(1.0, 0.97 + np.abs(frames[0] - 0.2))  # white, clipped at 1
    frames[1, :, :19, :] = np.nan
    return frames


def test_picker_skips_saturated_snow_and_masked_frames():
    frames = _cube()
    pick = representative_frame(frames)
    assert pick not in (0, 1), pick
    assert 2 <= pick <= 5
    frames[[0, 3]] = frames[[3, 0]]  # snow in the middle, where a tie-break would look
    assert representative_frame(frames) not in (1, 3)


def test_picker_prefers_a_clear_frame_over_a_masked_copy_of_it():
    clear = _ground(7)
    masked = clear.copy()
    masked[:, :12, :] = np.nan
    snow = np.ones_like(clear)
    assert representative_frame(np.stack([snow, masked, clear])) == 2
    assert representative_frame(np.stack([snow, _ground(3)])) == 1  # two frames only


def test_picker_degenerate_inputs():
    assert representative_frame(np.full((3, 1, 4, 4), np.nan)) == 0
    assert representative_frame(np.ones((1, 3, 4, 4))) == 0
    assert representative_frame(np.ones((4, 3, 4, 4))) == 0  # all alike: the earliest


def test_pick_frame_reads_nodata_as_missing():
    """A uint16 cube with nodata 0: a frame that is mostly 0 is cloud-masked, not dark."""
    frames = (np.nan_to_num(_cube()) * 10000).astype(np.uint16)  # frame 1's NaN as 0
    frames[4, :, :20, :] = 0
    ds = xr.Dataset(
        {
            b: (("time", "y", "x"), frames[:, i], {"nodata": 0})
            for i, b in enumerate(("red", "green", "blue"))
        }
    )
    assert pick_frame(ds, ["red", "green", "blue"], "time") in (2, 3, 5)


def test_axis_limits_of_near_constant_rates_include_the_floor():
    rates = [0.7708, 0.7712, 0.7727]
    lo, hi = axis_limits(rates, rel_span=RATE_SPAN, min_span=0.01, pad=0.15, floor=0.0)
    assert lo < min(rates) and hi > max(rates)
    assert hi - lo >= RATE_SPAN * 0.77  # tens of %, not a 0.002 window
    lo, hi = axis_limits([45.21, 45.22, 45.24], [40.0], PSNR_SPAN)
    assert lo < 40.0 < 45.24 < hi and hi - lo >= PSNR_SPAN
    lo, hi = axis_limits([0.001, 0.002], rel_span=RATE_SPAN, min_span=0.01, floor=0.0)
    assert lo == 0.0 and hi >= 0.01
    assert axis_limits([], [float("nan")]) == (0.0, 1.0)
    assert axis_limits([30.0, 60.0], [40.0], PSNR_SPAN)[0] < 30.0  # a real spread kept


def _verification(rates: list[float]) -> Verification:
    v = Verification()
    for i, rate in enumerate(rates):
        sid = f"cube_{i}"
        v.samples[sid] = {"id": sid, "split": "train", "bpppb": rate, "ratio": 20.0}
        v.samples[sid].update(raw_bytes=4e6, encoded_bytes=2e5)
        for j, band in enumerate(("B02", "B03", "B04", "B11")):
            psnr = 46.0 + 0.01 * i - (1.5 if band == "B11" and i == 0 else 0.2 * j)
            v.checks.append(BandCheck(sid, band, "continuous", psnr, 40.0, False, True))
        v.checks.append(BandCheck(sid, "SCL", "categorical", float("inf"), None, True, True))
    return v


def _capture(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Record each figure's axes (limits, titles, offset labels) before it is saved."""
    seen: dict[str, object] = {}
    save = report._save

    def recording(fig, path: Path) -> Path:
        fig.canvas.draw()
        seen[path.name] = [
            {
                "xlim": ax.get_xlim(),
                "ylim": ax.get_ylim(),
                "title": ax.get_title(),
                "labels": (ax.get_xlabel(), ax.get_ylabel()),
                "offsets": (ax.xaxis.get_offset_text().get_text(),)
                + (ax.yaxis.get_offset_text().get_text(),),
            }
            for ax in fig.axes
        ]
        return save(fig, path)

    monkeypatch.setattr(report, "_save", recording)
    return seen


def test_plots_show_the_real_spread_with_units(tmp_path, monkeypatch):
    seen = _capture(monkeypatch)
    paths = report._plots(_verification([0.7708, 0.7712, 0.7727]), tmp_path)
    assert all(p.stat().st_size > 5000 for p in paths)
    (rate,) = seen["psnr_vs_bpppb.png"]
    x0, x1 = rate["xlim"]
    y0, y1 = rate["ylim"]
    assert x1 - x0 >= 0.2 and x0 <= 0.7708 and x1 >= 0.7727
    assert y0 < 40.0 and y1 > 46.0 and y1 - y0 >= PSNR_SPAN
    assert rate["offsets"] == ("", "")
    assert "bits per pixel per band" in rate["labels"][0] and "dB" in rate["labels"][1]
    (band,) = seen["psnr_per_band.png"]
    assert band["ylim"][0] < 40.0 and band["offsets"] == ("", "")
    assert "dB" in band["labels"][1]
    (size,) = seen["sizes.png"]
    assert size["xlim"][0] == 0 and size["offsets"] == ("", "")


def test_worst_band_comes_from_the_sample_in_verification():
    v = _verification([0.5, 0.6])
    assert worst_band(v, "cube_0", ["B02", "B03", "B04", "B11"]) == ("B11", 44.5)
    assert worst_band(v, "cube_1", ["B02", "B03", "B04", "B11"])[0] == "B11"
    assert worst_band(v, "cube_0", ["B02", "B03"]) == ("B03", 45.8)
    assert worst_band(v, "cube_0", ["SCL"]) is None  # lossless classes have no PSNR
    assert worst_band(None, "cube_0", ["B02"]) is None


def _frame(bands: tuple[str, ...], noise: dict[str, float]) -> tuple[xr.Dataset, xr.Dataset]:
    rng = np.random.default_rng(1)
    ground = _ground(2, 24)
    orig = {b: ground[i % 3] for i, b in enumerate(bands)}
    dec = {b: v + rng.normal(0, noise.get(b, 0.0005), v.shape) for b, v in orig.items()}

    def ds(d: dict[str, np.ndarray]) -> xr.Dataset:
        return xr.Dataset({b: (("y", "x"), v) for b, v in d.items()})

    return ds(orig), ds(dec)


def test_error_panel_names_the_worst_band(tmp_path, monkeypatch):
    seen = _capture(monkeypatch)
    original, decoded = _frame(("B04", "B03", "B02", "B11"), {"B11": 0.01})
    rgb = ["B04", "B03", "B02"]
    path = report.sample_panel(original, decoded, rgb, tmp_path, "cube_0", worst=("B11", 38.46))
    assert path.stat().st_size > 5000
    images = seen["sample.png"][:3]
    assert "B11" in images[2]["title"] and "38.5 dB" in images[2]["title"]
    assert "worst band of the sample" in images[2]["title"]
    assert all(ax["labels"] == ("x (px)", "y (px)") for ax in images)
    # without verification: the shown band that is worst in this frame, said as such
    original, decoded = _frame(("B04", "B03", "B02"), {"B03": 0.01})
    report.sample_panel(original, decoded, rgb, tmp_path, "cube_0")
    title = seen["sample.png"][2]["title"]
    assert "B03" in title and "this frame" in title


def test_drawn_panel_of_built_shards_shows_the_verified_worst_band(tmp_path, monkeypatch):
    """From shards as written: the worst band (here outside RGB) is decoded and named."""
    from pipeline.build import build, with_overrides
    from pipeline.publish.panel import draw_sample_panel
    from pipeline.recipe import load_recipe
    from pipeline.sources import mirror_for
    from pipeline.sources.twins import write_dynamicearthnet

    write_dynamicearthnet(tmp_path / "den", cubes=1, frames=6, size=32, progress=False)
    recipe = load_recipe("dynamicearthnet", location=str(tmp_path / "den"))
    recipe = with_overrides(recipe, cubes=1)
    result = build(recipe, tmp_path / "out", progress=False)
    v = result.verification
    sid = next(iter(v.samples))
    band, psnr = worst_band(v, sid, ["red", "green", "blue", "nir"])
    seen = _capture(monkeypatch)
    mirror = mirror_for(recipe.source, progress=False)
    shards = [str(s) for s in result.shards]
    path = draw_sample_panel(recipe, shards, mirror, tmp_path / "panel", verification=v)
    assert path is not None and path.stat().st_size > 5000
    title = seen["sample.png"][2]["title"]
    assert band in title and f"{psnr:.1f} dB" in title and "of the sample" in title
