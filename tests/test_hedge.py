"""The hedged final encode: a small PSNR-target group also encoded a little coarser (by its
gain) on the core its encoder leaves idle, the smaller that meets the floor kept."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline import EncodeOptions, decode_cube, encode_cube
from pipeline.codec import hedge, landing
from pipeline.codec.metrics import compare
from tests.conftest import s2_like
from tests.test_rate_control import _context


def test_hedge_jobs_only_for_one_small_stream(monkeypatch):
    ctx, groups = _context(s2_like(t=8, h=64, w=64), codec="libx265", decorrelate="klt")
    on = EncodeOptions(psnr=40)
    assert hedge.worth_hedging(groups, on).hedge
    video = [g for g in groups if g.kind == "continuous"]
    assert len(video) == 1
    g = video[0]
    s = replace(g.settings, crf=20.0, gain=0.9)
    others = [(x, x.settings) for x in groups if x.kind != "continuous"]
    jobs = [(g, s), *others]
    main, [(alt_group, alt)] = hedge.hedge_jobs(jobs, {g.name}, on, 64)
    assert alt_group is g and alt.crf == 20.0 and alt.codec == s.codec
    # the pair straddles the aim by HEDGE_DB of PSNR, at the prior gain slope
    apart = landing.amplitude_db(alt.gain) - landing.amplitude_db(main[0][1].gain)
    assert apart * landing.GAIN_SLOPE == pytest.approx(landing.HEDGE_DB)
    assert main[0][1].gain > s.gain > alt.gain and main[1:] == others
    assert hedge.hedge_jobs(jobs, {g.name}, replace(on, hedge=False), 64) == (jobs, [])
    assert hedge.hedge_jobs(jobs, set(), on, 64) == (jobs, [])  # not a PSNR-target group
    two = [g, replace(g, name="other")]
    assert not hedge.worth_hedging(two, on).hedge  # two encoders keep two cores busy
    monkeypatch.setattr(hedge.os, "cpu_count", lambda: 1)
    assert not hedge.worth_hedging(groups, on).hedge  # no idle core
    monkeypatch.setattr(hedge, "HEDGE_PIXELS", 64 * 64)
    assert hedge.hedge_jobs(jobs, {g.name}, on, 64) == (jobs, [])  # frames too large


def test_the_coarser_encode_is_kept_exactly_when_it_meets_the_floor(monkeypatch):
    seen: list[tuple[float, float]] = []
    results = hedge.hedge_results

    def spy(alts):
        out = results(alts)
        seen.extend((alt.settings.gain, measured) for alt, measured in out.values())
        return out

    import pipeline.codec.encode as encode_module

    monkeypatch.setattr(encode_module, "hedge_results", spy)
    monkeypatch.setattr(landing, "MAX_REFINES", 0)  # the pair's choice alone
    monkeypatch.setattr(landing, "bracketed", lambda *a: False)
    ds = s2_like(t=24, h=64, w=64)[["B02", "SCL"]]  # one video stream, one class layer
    floor = 40.0
    enc = encode_cube(ds, EncodeOptions(psnr=floor, codec="libx265", decorrelate="none"))
    worst = min(q.psnr for q in compare(ds, decode_cube(enc)) if not q.exact)
    assert worst >= floor
    [(coarser_gain, measured)] = seen
    [stream] = [s for s in enc.manifest.streams if s.kind == "continuous"]
    [channel] = [c for c in enc.manifest.channels if c.name == "B02"]
    # the coarser twin's codes are smaller: a larger scale per code
    if measured >= floor:
        assert stream.gain == pytest.approx(coarser_gain)
    else:
        assert stream.gain > coarser_gain
    assert channel.scale is not None and channel.scale > 0
    assert not [f for f in enc.filenames() if "hedge" in f]


def test_no_hedge_when_switched_off(monkeypatch):
    calls: list[int] = []
    jobs = hedge.hedge_jobs

    def spy(*a, **k):
        out = jobs(*a, **k)
        calls.append(len(out[1]))
        return out

    import pipeline.codec.encode as encode_module

    monkeypatch.setattr(encode_module, "hedge_jobs", spy)
    ds = s2_like(t=16, h=64, w=64)[["B02", "SCL"]]
    for on in (False, True):
        encode_cube(ds, EncodeOptions(psnr=40, codec="libx265", decorrelate="none", hedge=on))
    assert calls == [0, 1]
