"""The hedged final encode: a small PSNR-target group also encoded one step coarser on the
core its encoder leaves idle, the smaller that meets the floor kept."""

from __future__ import annotations

from dataclasses import replace

from pipeline import EncodeOptions, decode_cube, encode_cube
from pipeline.codec import hedge
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
    s = replace(g.settings, crf=20.0)
    jobs = [(g, s), *((x, x.settings) for x in groups if x.kind != "continuous")]
    [(alt_group, alt)] = hedge.hedge_jobs(jobs, {g.name}, on, 64)
    assert alt_group is g and alt.crf == 21.0 and alt.codec == s.codec
    assert hedge.hedge_jobs(jobs, {g.name}, replace(on, hedge=False), 64) == []  # switched off
    assert hedge.hedge_jobs(jobs, set(), on, 64) == []  # not a PSNR-target group
    assert hedge.hedge_jobs([(g, replace(s, crf=51.0))], {g.name}, on, 64) == []  # no coarser step
    two = [g, replace(g, name="other")]
    assert not hedge.worth_hedging(two, on).hedge  # two encoders keep two cores busy
    monkeypatch.setattr(hedge.os, "cpu_count", lambda: 1)
    assert not hedge.worth_hedging(groups, on).hedge  # no idle core
    monkeypatch.setattr(hedge, "HEDGE_PIXELS", 64 * 64)
    assert hedge.hedge_jobs(jobs, {g.name}, on, 64) == []  # frames too large


def test_the_coarser_encode_is_kept_exactly_when_it_meets_the_floor(monkeypatch):
    seen: list[tuple[float, float, float]] = []
    keep = hedge.keep_hedges

    def spy(done, alts):
        for name, (alt, measured) in ({} if alts is None else alts.result()).items():
            seen.append((float(done[name].settings.crf), float(alt.settings.crf), measured))
        return keep(done, alts)

    import pipeline.codec.encode as encode_module

    monkeypatch.setattr(encode_module, "keep_hedges", spy)
    ds = s2_like(t=24, h=64, w=64)[["B02", "SCL"]]  # one video stream, one class layer
    floor = 40.0
    enc = encode_cube(ds, EncodeOptions(psnr=floor, codec="libx265", decorrelate="none"))
    worst = min(q.psnr for q in compare(ds, decode_cube(enc)) if not q.exact)
    assert worst >= floor
    assert len(seen) == 1
    primary, coarser, measured = seen[0]
    assert coarser == primary + 1
    [stream] = [s for s in enc.manifest.streams if s.kind == "continuous"]
    assert stream.crf == (coarser if measured >= floor else primary)
    assert not [f for f in enc.filenames() if "hedge" in f]


def test_no_hedge_when_switched_off(monkeypatch):
    calls: list[int] = []
    jobs = hedge.hedge_jobs

    def spy(*a, **k):
        out = jobs(*a, **k)
        calls.append(len(out))
        return out

    import pipeline.codec.encode as encode_module

    monkeypatch.setattr(encode_module, "hedge_jobs", spy)
    ds = s2_like(t=16, h=64, w=64)[["B02", "SCL"]]
    for on in (False, True):
        encode_cube(ds, EncodeOptions(psnr=40, codec="libx265", decorrelate="none", hedge=on))
    assert calls == [0, 1]
