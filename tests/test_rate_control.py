"""Rate control by a fitted model, the trial sample, and frames that encoders mishandle:
large ones (split into streams for memory) and x265's unsafe widths."""

from __future__ import annotations

import math

import pytest

from pipeline import EncodeOptions, decode_cube, encode_cube
from pipeline.codec import planning, search
from pipeline.codec.metrics import compare
from pipeline.codec.ratecontrol import MARGIN_DB, MAX_TRIALS, RateModel, Trial, fit_rate_model
from pipeline.codec.sample import RUN, SHORT_RUN, sample_cube, sample_grid
from tests.conftest import s2_like


def _codec(psnr_of_q):
    calls: list[int] = []

    def measure(q: int) -> Trial:
        calls.append(q)
        p = psnr_of_q(q)
        return Trial(q, p, 0 if p == -math.inf else int(1e6 * 2 ** (-q / 6)))

    return measure, calls


def test_linear_codec_needs_two_or_three_trials():
    measure, calls = _codec(lambda q: 60.0 - 1.1 * q)
    q, model = fit_rate_model(measure, 45.0, start=20, lo=0, hi=51)
    assert q == math.floor((60 - 45 - MARGIN_DB) / 1.1)
    assert len(calls) <= MAX_TRIALS
    assert model.bytes_at(q) == pytest.approx(1e6 * 2 ** (-q / 6), rel=0.05)


def test_never_above_a_quantiser_that_missed():
    # noisy codec: the model says 14, but a trial at 13 missed
    table = {15: 43.0, 13: 44.9, 11: 47.0, 12: 45.6, 14: 46.0}
    measure, _ = _codec(lambda q: table.get(q, 60.0 - q))
    q, _ = fit_rate_model(measure, 45.0, start=15, lo=0, hi=51)
    assert q <= 12


def test_plateau_is_not_extrapolated():
    """A KLT group's shared step caps PSNR: finer quantisers stop helping."""
    measure, _ = _codec(lambda q: min(50.0, 60.0 - q))
    assert fit_rate_model(measure, 51.0, start=15, lo=0, hi=51) is None


def test_refused_quantisers_are_skipped():
    measure, _ = _codec(lambda q: -math.inf if q > 20 else 60.0 - q)
    found = fit_rate_model(measure, 45.0, start=30, lo=0, hi=51)
    assert found is not None and 60.0 - found[0] >= 45.0


def test_an_exact_trial_gives_no_slope():
    """AV1 at CRF 0 decodes exactly: infinite PSNR next to 50.6 dB five steps away is not a
    slope of 3 dB a step (that put a 55 dB floor at CRF 3, which measured 53.0)."""
    measure, _ = _codec(lambda q: math.inf if q == 0 else 54.6 - 0.8 * q)
    q, model = fit_rate_model(measure, 55.0, start=5, lo=0, hi=63)
    assert q == 0 and model.slope < 3.0


def test_a_steep_step_between_trials_gets_one_more():
    """AV1 near CRF 0: 54.3 dB at 3, 61.8 at 1. The floor of 55 lies between; CRF 2 is
    taken (through the three trials' parabola, or tried) instead of settling 6 dB above
    the floor."""
    table = {5: 53.6, 4: 53.9, 3: 54.3, 2: 57.0, 1: 61.8, 0: math.inf}
    measure, calls = _codec(lambda q: table[q])
    q, _ = fit_rate_model(measure, 55.0, start=5, lo=0, hi=63)
    assert q == 2 and len(calls) <= 4


def test_three_trials_cross_the_goal_on_a_parabola():
    """A bending curve (AV1 on a 256 px twin, measured at CRF 10, 19, 26 and 33): the line
    between the trials at 19 and 33 puts a 44.92 dB goal at CRF 26, two steps finer than
    needed; the parabola through the three trials one step."""
    import numpy as np

    from pipeline.codec.videocodecs import AOM_CODEC

    scale = AOM_CODEC.quantiser_scale
    measured = {10: 52.41, 19: 48.52, 26: 45.97, 33: 42.70}

    def psnr(q: int) -> float:
        u = [scale.u(k) for k in measured]
        return float(np.interp(scale.u(q), u, list(measured.values())))

    trials = tuple(Trial(q, measured[q], 1000 - q) for q in (10, 19, 33))
    model = RateModel(trials, 0.9, scale)
    goal = 44.92
    q = model.quantiser_for(goal, 0, 63)
    assert psnr(q) >= goal and q == max(k for k in range(10, 34) if psnr(k) >= goal) - 1
    line = RateModel(trials[1:], 0.9, scale).quantiser_for(goal, 0, 63)
    assert line == q - 1


def test_a_fit_two_steps_from_a_trial_is_tried():
    """A convex codec (AV1): the line through 10 and 4 puts the goal at 6, which misses;
    a trial there finds 5."""
    table = {10: 45.2, 6: 49.9, 5: 52.0, 4: 54.0}
    measure, calls = _codec(lambda q: table.get(q, 60.0 - 1.5 * q))
    q, _ = fit_rate_model(measure, 50.0, start=10, lo=0, hi=63)
    assert calls == [10, 4, 6] and q == 5


def test_exact_trials_alone_step_coarser():
    measure, calls = _codec(lambda q: math.inf if q <= 20 else 60.0 - q)
    q, _ = fit_rate_model(measure, 45.0, start=15, lo=0, hi=51)
    assert q > 15 and len(calls) <= MAX_TRIALS


def test_sample_is_a_few_percent_of_a_long_cube():
    ds = s2_like(t=120, h=256, w=256)
    enc_ctx = _context(ds)
    group = next(g for g in enc_ctx[1] if g.kind == "continuous")
    sample = sample_cube(enc_ctx[0], group)
    full = ds.sizes["time"] * 256 * 256
    part = sample.ds.sizes["time"] * sample.ds.sizes["y"] * sample.ds.sizes["x"]
    assert part < 0.1 * full
    assert sample.ds.sizes["time"] >= RUN  # whole GOPs, as the cube gets them


def test_sample_bias_sees_the_frames_the_sample_left_out(tmp_path):
    """A small cube whose sampled frames are busier than the rest: the sample flatters it
    less than nothing, and the bias says so (8 frames of the sample's own could not)."""
    import numpy as np
    import xarray as xr

    t, h, w = 68, 100, 100
    rng = np.random.default_rng(0)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    smooth = np.broadcast_to(0.3 + 0.2 * np.sin(3 * xx) * np.cos(2 * yy), (t, h, w))
    ds = xr.Dataset({"v": (("time", "y", "x"), smooth.astype(np.float32).copy())})
    ctx, groups = _context(ds)
    grid = sample_grid(ctx)
    assert grid is not None and len(grid.frames) < t
    busy = list(grid.frames)
    ds["v"][busy] = (smooth[busy] + rng.normal(0, 0.05, (len(busy), h, w))).astype(np.float32)
    ctx, groups = _context(ds)
    group = next(g for g in groups if g.kind == "continuous")
    bias = search.sample_bias(ctx, grid, grid.crop(ctx, group), tmp_path, group, 40.0)
    assert bias < -1.0


def test_sample_bias_same_with_streams_at_once_or_in_turn(monkeypatch, tmp_path):
    """Split streams of the bias pass's full frames go to their encoders at once (small
    groups) or one after another (for memory): the measured bias is the same."""
    monkeypatch.setattr(planning, "MAX_STREAM_PIXELS", 128 * 128)
    monkeypatch.setattr(search, "BIAS_PIXELS", 0)  # the 8-frame pass, full frames
    ctx, groups = _context(s2_like(t=64, h=256, w=256), codec="libx265")
    group = next(g for g in groups if g.kind == "continuous" and g.n_planes > 1)
    assert len(group.streams()) > 1
    grid = sample_grid(ctx)
    sample = grid.crop(ctx, group)
    found = []
    for together in (0, 1 << 30):
        monkeypatch.setattr(search, "BIAS_TOGETHER", together)
        found.append(search.sample_bias(ctx, grid, sample, tmp_path, group, 40.0))
    assert found[0] == found[1] != 0.0


def _context(ds, **options):
    from pipeline.codec.cube import analyse, cube_stats
    from pipeline.codec.groupcoder import CubeContext

    layout = analyse(ds)
    stats = cube_stats(ds, layout)
    opts = EncodeOptions(psnr=40, **options)
    groups = planning.plan_groups(layout, stats, opts, None, (ds.sizes["y"], ds.sizes["x"]))
    return CubeContext(ds, layout, stats, {}, True), groups


def test_trials_run_a_cheaper_preset_and_add_its_gain(monkeypatch, tmp_path):
    """AV1 and VVC trials run a faster preset; the model is told what the cube's own preset
    would have measured, and the cube keeps its preset."""
    from dataclasses import replace

    from pipeline.codec.videocodecs import get_codec

    ctx, groups = _context(s2_like(t=8, h=64, w=64))
    group = next(g for g in groups if g.kind == "continuous")
    group = replace(group, settings=replace(group.settings, preset="medium"))
    seen: list[str] = []

    def fake(part, spool, grp, settings, tag, whole=False):
        seen.append(settings.preset)
        return Trial(int(settings.crf), 60.0 - settings.crf, int(1e6 * 2 ** (-settings.crf / 6)))

    monkeypatch.setattr(search, "_trial", fake)
    for name in ("libaom-av1", "libvvenc", "libx265"):
        seen.clear()
        cheap, gain = get_codec(name).trial_settings(group.settings)
        choice = search._fit(ctx, tmp_path, group, name, 45.0)
        assert choice is not None and choice.settings.preset == "medium"
        assert set(seen) == {cheap.preset}
        assert all(t.psnr == pytest.approx(60.0 - t.q + gain) for t in choice.model.trials)
        cheaper = name != "libx265"
        assert (cheap.preset != "medium") == cheaper and (gain > 0) == cheaper
    lossless = replace(group.settings, codec="libx265", lossless=True)
    assert get_codec("libaom-av1").trial_settings(lossless) == (lossless, 0.0)


def test_psnr_target_met_with_few_encodes(monkeypatch):
    trials: list[int] = []
    fit = search.fit_rate_model

    def counted(measure, *a, **k):
        return fit(lambda q: trials.append(q) or measure(q), *a, **k)

    monkeypatch.setattr(search, "fit_rate_model", counted)
    ds = s2_like(t=40, h=96, w=96)
    enc = encode_cube(ds, EncodeOptions(psnr=42, codec="libx265", decorrelate="none"))
    worst = min(q.psnr for q in compare(ds, decode_cube(enc)) if not q.exact)
    assert worst >= 42
    groups = [s for s in enc.manifest.streams if s.kind == "continuous"]
    assert len(trials) <= MAX_TRIALS * len(groups)


def test_large_frames_split_into_streams(monkeypatch):
    """Streams of at most MAX_STREAM_PIXELS a frame, each its own pass; decoded as one."""
    monkeypatch.setattr(planning, "MAX_STREAM_PIXELS", 64 * 64)
    ds = s2_like(t=10, h=64, w=64)
    bands = ["B02", "B03", "B04", "B8A"]
    opts = EncodeOptions(
        crf=20,
        codec="libx265",
        decorrelate="klt",
        groups=(planning.GroupSpec(tuple(bands), name="s2"),),
    )
    enc = encode_cube(ds, opts)
    names = sorted(s.name for s in enc.manifest.streams if s.kind == "continuous")
    assert names == ["s2.0", "s2.1", "s2.2", "s2.3"]
    quality = {q.channel: q.psnr for q in compare(ds, decode_cube(enc))}
    assert all(quality[b] > 35 for b in bands)


@pytest.mark.parametrize("width", [34, 40, 48])
def test_x265_unsafe_widths_encode(width):
    """ffmpeg 9's libx265 corrupted its heap on these widths; they are padded now."""
    ds = s2_like(t=6, h=32, w=width)
    enc = encode_cube(ds, EncodeOptions(crf=20, codec="libx265"))
    dec = decode_cube(enc)
    assert dec.sizes["x"] == width
    assert all(q.psnr > 35 for q in compare(ds, dec) if not q.exact)


@pytest.mark.parametrize("width", [16, 32, 64])
@pytest.mark.parametrize("engine", ["pyav", "ffmpeg"])
def test_x265_widths_that_decode_wrong_are_padded(width, engine):
    """At 16, 32 and 64 px wide, x265 frames of flat blocks came back with whole blocks of
    an earlier frame (errors of half the range at CRF 0); padded, they decode right."""
    import numpy as np
    import xarray as xr

    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 16, (16, 4, width // 16 + 1))
    v = np.kron(blocks, np.ones((1, 16, 16)))[:, :, :width].astype(np.float32) / 15
    ds = xr.Dataset({"v": (("time", "y", "x"), v)})
    enc = encode_cube(ds, EncodeOptions(crf=0, codec="libx265", engine=engine))
    (quality,) = compare(ds, decode_cube(enc))
    assert quality.max_abs_error < 0.01


def test_a_floor_lossless_coding_cannot_reach_is_an_error():
    """Above what 12-bit codes hold (about 83 dB on a smooth float band) even the lossless
    fallback misses: an error naming the group, not a cube silently under its floor."""
    import numpy as np
    import xarray as xr

    from pipeline.errors import InvalidCubeError

    rng = np.random.default_rng(0)
    yy, xx = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    wave = np.sin(xx[None] / 7 + yy[None] / 11 + np.arange(8)[:, None, None] / 3)
    v = (wave + rng.normal(0, 0.01, (8, 64, 64))).astype(np.float32)
    ds = xr.Dataset({"v": (("time", "y", "x"), v)})
    with pytest.raises(InvalidCubeError, match=r"'v'.*85 dB is out of reach.*lossless"):
        encode_cube(ds, EncodeOptions(psnr=85))


def test_a_lone_trial_near_the_goal_is_enough():
    """With a hedged final encode, one trial within the window is the answer: above the
    goal it is moved coarser by the prior slope, below it finer (groups without a KLT)."""
    goal = 45.0 + MARGIN_DB
    measure, calls = _codec(lambda q: 60.0 - q)
    q, _ = fit_rate_model(measure, 45.0, start=14, lo=0, hi=51, lone=(1.5, 1.5))
    assert calls == [14] and 60.0 - q >= goal and q == math.floor(60.0 - goal)
    measure, calls = _codec(lambda q: 60.0 - q)
    q, _ = fit_rate_model(measure, 45.0, start=15, lo=0, hi=51, lone=(1.5, 1.5))
    assert calls == [15] and q == 14  # below the goal: one step finer, not measured
    measure, calls = _codec(lambda q: 60.0 - q)
    fit_rate_model(measure, 45.0, start=15, lo=0, hi=51, lone=(0.0, 1.5))
    assert len(calls) > 1  # a KLT group's window: below the goal needs a second trial
    measure, calls = _codec(lambda q: 60.0 - q)
    fit_rate_model(measure, 45.0, start=14, lo=0, hi=51)
    assert len(calls) > 1  # no hedge, no window


def test_av1_quantiser_scale_fits_its_convex_curve():
    """libaom's PSNR is convex in its CRF (4 dB a step near 1, a third of that near 20):
    on the codec's own scale two trials find the largest CRF meeting the goal."""
    from pipeline.codec.videocodecs import AOM_CODEC

    scale = AOM_CODEC.quantiser_scale

    def psnr(q: int) -> float:
        return 70.0 - 28.0 * math.log10(q + 1)

    goal = 52.0 + MARGIN_DB
    best = max(q for q in range(64) if psnr(q) >= goal)
    measure, calls = _codec(psnr)
    q, _ = fit_rate_model(measure, 52.0, start=12, lo=0, hi=63, scale=scale)
    assert q == best and len(calls) == 2
    measure, calls = _codec(psnr)
    linear = fit_rate_model(measure, 52.0, start=12, lo=0, hi=63)
    assert linear is not None and (linear[0] != best or len(calls) > 2)


def test_codecs_far_behind_after_one_trial_are_dropped():
    firsts = {
        "a": Trial(10, 45.0, 1000),
        "b": Trial(10, 45.0, 1500),  # 1.5x a's bytes at the same PSNR
        "c": Trial(12, 44.0, 950),  # 1 dB short: about 1040 bytes at a's PSNR
        "d": Trial(10, -math.inf, 0),  # refused: kept, its fit decides
    }
    assert search._contenders(firsts, 45.0) == ["a", "c", "d"]


def test_first_trials_start_where_the_probe_says():
    """x265 ultrafast's PSNR plus its CRF is about constant: a probe 3 dB above the aim
    moves x265's start three steps coarser, AV1's along its own scale."""
    from pipeline.codec.videocodecs import AOM_CODEC, X265_CODEC

    probe = Trial(15, 48.0, 1000)
    none = (0.0, 0.0)
    x265 = search._start("libx265", 45.0 - MARGIN_DB, none, probe)
    assert x265 == round(15 + 3 + X265_CODEC.probe_offset_db)
    u = 48.0 + 15 + AOM_CODEC.probe_offset_db - 45.0
    av1 = search._start("libaom-av1", 45.0 - MARGIN_DB, none, probe)
    assert av1 == round(AOM_CODEC.quantiser_scale.q(u))
    klt = search._start("libx265", 45.0 - MARGIN_DB, (0.0, 2.0), probe)
    assert klt == x265 - 1  # aimed a dB higher: the middle of a window above the goal
    refused = Trial(15, -math.inf, 0)
    assert search._start("libx265", 45.0 - MARGIN_DB, none, refused) == search._prior(45.0)


def test_small_cube_sample_is_one_short_run():
    """NDVI's shape: a whole 32-frame run of the smallest mosaic would be six times the
    budget, so the sample is one run of 16 frames on a 64 px mosaic."""
    ctx, _ = _context(s2_like(t=68, h=101, w=100))
    grid = sample_grid(ctx)
    assert grid is not None
    assert len(grid.frames) == SHORT_RUN
    assert (len(grid.ys), len(grid.xs)) == (64, 64)
