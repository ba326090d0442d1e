"""Landing a PSNR-target group in [floor, floor + WINDOW_DB]: the gain as a fine quantiser,
re-aiming from whole-cube measurements."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline import EncodeOptions, decode_cube, encode_cube
from pipeline.codec import landing
from pipeline.codec.metrics import compare
from pipeline.codec.quantize import Quantiser
from pipeline.codec.ratecontrol import RateModel, Trial
from pipeline.codec.settings import VideoSettings
from tests.conftest import s2_like

AV1 = VideoSettings("libaom-av1", "gray12le", crf=10.0)


def test_gain_scales_the_codes_and_keeps_the_values():
    q = Quantiser.for_range(-1.0, 3.0, 12, integer=False)
    half = q.amplified(0.5)
    values = np.linspace(-1, 3, 101, dtype=np.float32)
    codes = np.empty(values.shape, np.uint16)
    half.quantise(values, codes)
    assert abs(int(codes.max()) - q.max_code * 0.5) <= 0.5
    back = half.from_codes(codes, np.dtype(np.float32))
    assert np.abs(back - values).max() <= half.scale / 2 + 1e-6
    assert q.amplified(1.0) is q
    exact = Quantiser.for_range(0, 100, 12, integer=True)
    assert exact.scale == 1.0 and exact.amplified(0.8).scale == pytest.approx(1.25)


def test_aim_and_shift_move_psnr_by_the_prior_slope():
    s = landing.aimed(AV1, 1.1)
    assert landing.amplitude_db(s.gain) == pytest.approx(1.0)
    assert landing.aimed(AV1, -0.3).gain == 1.0  # below the aim: the quantiser as it is
    up = landing.shifted(s, 0.55)
    assert landing.amplitude_db(up.gain) == pytest.approx(0.5)
    assert landing.shifted(s, 5.0).gain == 1.0  # never above gain 1
    assert landing.gain_of(100.0) == landing.MIN_GAIN
    lossless = VideoSettings("libx265", "gray12le", crf=None, lossless=True)
    assert landing.aimed(lossless, 3.0) is lossless


def test_landed_is_the_window():
    assert landing.landed(45.0, 45.0) and landing.landed(45.5, 45.0)
    assert not landing.landed(44.99, 45.0) and not landing.landed(45.51, 45.0)


def test_retarget_an_overshoot_by_the_gain_alone():
    s = landing.retarget(AV1, None, measured=47.0, floor=45.0)
    assert s.crf == AV1.crf and s.codec == AV1.codec
    given_up = landing.amplitude_db(s.gain) * landing.GAIN_SLOPE
    assert given_up == pytest.approx(47.0 - 45.0 - landing.AIM_DB)


def test_retarget_uses_the_cubes_own_gain_slope():
    at = AV1.__class__(**{**AV1.__dict__, "gain": 10 ** (-1 / 20)})  # 1 dB of gain
    # gain 1 measured 46.0, 1 dB of gain 44.0: 2 dB of PSNR per dB of gain (clamped to 2)
    points = [(AV1, 46.0), (at, 44.0)]
    assert landing.gain_slope(at, 44.0, points) == pytest.approx(2.0)
    s = landing.retarget(at, None, 44.0, 43.0, points)
    # 0.75 dB of PSNR given up at 2 dB per dB: 0.375 dB more than the 1 dB held
    assert landing.amplitude_db(s.gain) == pytest.approx(1.0 + 0.75 / 2.0)
    assert landing.gain_slope(at, 44.0, [(at, 44.0)]) == landing.GAIN_SLOPE


def test_retarget_a_miss_beyond_the_gain_takes_a_finer_quantiser():
    model = RateModel((Trial(10, 45.0, 1000), Trial(8, 47.0, 1200)), slope=1.0)
    # 3 dB short at gain 1: two AV1 steps of the model are not enough, three are
    s = landing.retarget(AV1, model, measured=42.0, floor=45.0)
    scale = landing.get_codec(AV1.codec).quantiser_scale
    predicted = 42.0 + (scale.u(10) - scale.u(float(s.crf)))
    assert s.crf is not None and s.crf < 10 and predicted >= 45.0 + landing.AIM_DB
    assert predicted - landing.amplitude_db(s.gain) * landing.GAIN_SLOPE == pytest.approx(
        45.0 + landing.AIM_DB
    )
    finest = AV1.__class__(**{**AV1.__dict__, "crf": 0.0})
    lossless = landing.retarget(finest, model, measured=40.0, floor=45.0)
    assert lossless.lossless and lossless.codec == "libx265" and lossless.gain == 1.0


@pytest.mark.parametrize("floor", [38.0, 44.0])
def test_psnr_target_lands_in_the_window(floor):
    ds = s2_like(t=24, h=64, w=64)[["B02", "B03", "B04", "SCL"]]
    enc = encode_cube(ds, EncodeOptions(psnr=floor, codec="libx265"))
    quality = [q for q in compare(ds, decode_cube(enc)) if not q.exact]
    worst = min(q.psnr for q in quality)
    assert floor <= worst <= floor + landing.WINDOW_DB + 0.05  # 0.05: this metric's rounding
    lossy = [s for s in enc.manifest.streams if s.kind == "continuous"]
    assert all(0 < s.gain <= 1 for s in lossy) and not math.isnan(worst)
