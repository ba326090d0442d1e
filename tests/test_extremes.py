"""Issue 13, silent-wrong half: extreme values, every coordinate dtype, one-line errors.

Each test failed on the code before the fix (values collapsed, off by one, NaN, tracebacks).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zstandard

from pipeline import EncodeOptions
from pipeline.codec.decode import decode_cube
from pipeline.codec.encode import encode_cube
from pipeline.codec.encoded import EncodedCube, sha256
from pipeline.codec.manifest import Manifest
from pipeline.codec.options import GroupSpec
from pipeline.errors import CorruptStreamError, InvalidCubeError, ManifestError

T, H, W = 3, 16, 16
RNG = np.random.default_rng(0)
YY, XX = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
SMOOTH = (np.sin(XX / 3) + np.cos(YY / 4))[None].repeat(T, 0) / 4 + 0.5  # 0..1
LOSSY = EncodeOptions(crf=12)
LOSSLESS = EncodeOptions(lossless=True)


def cube(values: np.ndarray, **coords: object) -> xr.Dataset:
    return xr.Dataset(
        {"v": (("time", "y", "x"), values)}, coords={"time": np.arange(len(values)), **coords}
    )


def roundtrip(ds: xr.Dataset, opts: EncodeOptions) -> xr.Dataset:
    """Through the stored bytes, as a reader gets it."""
    return decode_cube(EncodedCube.from_bytes(encode_cube(ds, opts).to_bytes()))


def psnr(a: np.ndarray, d: np.ndarray, base: int | float = 0) -> float:
    """PSNR in long double, relative to ``base`` (64-bit integers do not fit float64)."""
    a = a.astype(np.longdouble) - base
    d = d.astype(np.longdouble) - base
    mse = float(np.mean((a - d) ** 2))
    return np.inf if mse == 0 else float(20 * np.log10(float(a.max() - a.min()) / mse**0.5))


# -- extreme values ---------------------------------------------------------------------
def test_uint64_near_2_63_keeps_its_values():
    """Was: every value decoded to one (the offset went through float64)."""
    a = np.uint64(2**63) + (SMOOTH * 30000).astype(np.uint64)
    lossy = roundtrip(cube(a), LOSSY)["v"].values
    assert lossy.dtype == np.uint64 and len(np.unique(lossy)) > 100
    assert psnr(a, lossy, 2**63) > 45
    assert np.array_equal(roundtrip(cube(a), LOSSLESS)["v"].values, a)


def test_uint64_full_range_lossy_and_lossless():
    a = (SMOOTH * float(2**64 - 4096)).astype(np.uint64)
    a[0, 0, 0], a[0, 0, 1] = 0, np.iinfo(np.uint64).max
    assert psnr(a, roundtrip(cube(a), LOSSY)["v"].values) > 40
    assert np.array_equal(roundtrip(cube(a), LOSSLESS)["v"].values, a)


def test_int64_beyond_2_53_is_exact_under_lossless():
    """Was: off by one (offset rounded to float64)."""
    a = (2**53 + 1 + RNG.integers(0, 1000, (T, H, W))).astype(np.int64)
    assert np.array_equal(roundtrip(cube(a), LOSSLESS)["v"].values, a)
    wide = RNG.integers(-(2**63), 2**63 - 1, (T, H, W), dtype=np.int64)
    assert np.array_equal(roundtrip(cube(wide), LOSSLESS)["v"].values, wide)


def test_float64_near_1e308_is_finite_and_accurate():
    """Was: NaN (max - min overflowed to inf)."""
    for a in (1e308 + SMOOTH * 5e307, (SMOOTH - 0.5) * 2 * 1.7e308):
        d = roundtrip(cube(a), LOSSY)["v"].values
        assert np.isfinite(d).all()
        assert psnr(a / 1e300, d / 1e300) > 45
        assert np.array_equal(roundtrip(cube(a), LOSSLESS)["v"].values, a)


def test_float32_near_3e38_keeps_its_quality():
    """Was: 15 dB (float32 work arrays overflowed)."""
    a = ((SMOOTH - 0.5) * 6.6e38).astype(np.float32)
    d = roundtrip(cube(a), LOSSY)["v"].values
    assert d.dtype == np.float32 and np.isfinite(d).all()
    assert psnr(a, d) > 45


@pytest.mark.parametrize("opts", [LOSSY, LOSSLESS], ids=["lossy", "lossless"])
def test_inf_comes_back_as_inf_and_does_not_widen_the_range(opts):
    """Was: +inf/-inf decoded as NaN."""
    a = SMOOTH.astype(np.float32).copy()
    a[0, 0, :3] = np.inf
    a[1, 2, :2] = -np.inf
    a[2, 5, 5] = np.nan
    enc = encode_cube(cube(a), opts)
    (ch,) = enc.manifest.channels
    assert ch.posinf_bit is not None and ch.neginf_bit is not None
    assert 0 <= ch.valid_min and ch.valid_max <= 1  # finite values only
    d = decode_cube(EncodedCube.from_bytes(enc.to_bytes()))["v"].values
    assert np.array_equal(np.isposinf(d), np.isposinf(a))
    assert np.array_equal(np.isneginf(d), np.isneginf(a))
    assert np.array_equal(np.isnan(d), np.isnan(a))
    finite = np.isfinite(a)
    assert psnr(a[finite], d[finite]) > 45


@pytest.mark.parametrize(
    "dtype",
    ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"],
)
def test_lossless_is_exact_for_every_integer_dtype(dtype):
    info = np.iinfo(dtype)
    a = RNG.integers(info.min, info.max, (T, H, W), dtype=dtype, endpoint=True)
    a[0, 0, 0], a[0, 0, 1] = info.min, info.max
    out = roundtrip(cube(a), LOSSLESS)["v"].values
    assert out.dtype == a.dtype and np.array_equal(out, a)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_lossless_is_exact_for_every_float_dtype(dtype):
    """Was: quantised to 16 bits (float32 lossless lost about half its bits)."""
    info = np.finfo(dtype)
    a = (RNG.normal(0, 1, (T, H, W)) * RNG.choice([1e-3, 1, 1e3], (T, H, W))).astype(dtype)
    a[0, 0, :4] = [info.max, -info.max, info.tiny, -0.0]
    out = roundtrip(cube(a), LOSSLESS)["v"].values
    assert out.dtype == a.dtype
    assert np.array_equal(out.view(f"u{a.dtype.itemsize}"), a.view(f"u{a.dtype.itemsize}"))


def test_lossless_group_in_a_lossy_cube_uses_words():
    ds = cube(RNG.integers(0, 2**40, (T, H, W), dtype=np.int64))
    ds["w"] = ds["v"] * 1.0
    opts = EncodeOptions(groups=(GroupSpec(("v",), lossless=True),))
    enc = encode_cube(ds, opts)
    assert len(enc.manifest.channel("v").words or []) == 3
    assert np.array_equal(decode_cube(enc)["v"].values, ds["v"].values)


# -- coordinates ------------------------------------------------------------------------
def _coord_cases() -> dict[str, np.ndarray]:
    cases: dict[str, np.ndarray] = {"bool": np.array([True, False, True])}
    for d in ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]:
        cases[d] = np.array([np.iinfo(d).min, 1, np.iinfo(d).max], dtype=d)
    for d in ["float16", "float32", "float64"]:
        cases[d] = np.array([np.nan, -0.0, np.finfo(d).max], dtype=d)
    cases["complex128"] = np.array([1 + 2j, -3j, 0])
    cases["str"] = np.array(["a", "bé", ""])
    cases["bytes"] = np.array([b"a", b"b\xff", b""])
    cases["object_str"] = np.array(["a", "b", None], dtype=object)
    cases["datetime64_ns_nat"] = np.array(["2020-01-01", "NaT", "2020-01-03"], "M8[ns]")
    cases["datetime64_s"] = np.array(["1900-01-01", "2020-01-02", "2200-01-03"], "M8[s]")
    cases["timedelta64_ns_nat"] = np.array([0, 3_600_000_000_000, "NaT"], "m8[ns]")
    cases["timedelta64_h"] = np.array([1, 2, -3], "m8[h]")
    cftime = pytest.importorskip("cftime")
    cases["cftime_noleap"] = np.array(
        [cftime.DatetimeNoLeap(2020, 2, 28, 12), cftime.DatetimeNoLeap(1, 1, 1)] * 2
    )[:3]
    return cases


@pytest.mark.parametrize("name", list(_coord_cases()))
@pytest.mark.parametrize("length", [3, 75], ids=["short", "packed"])
def test_every_coordinate_dtype_round_trips(name, length):
    """Was: timedelta64 encoded then failed to decode; non-UTF-8 bytes and cftime did
    not encode."""
    vals = np.concatenate([_coord_cases()[name]] * (length // 3))
    ds = cube(np.zeros((T, H, W), np.uint8), lab=("lab", vals))
    ds = ds.assign_coords(time=("time", vals[:T]))
    out = roundtrip(ds, LOSSY)
    for c in ("lab", "time"):
        a, b = ds[c].values, out[c].values
        assert a.dtype == b.dtype, c
        if a.dtype.kind == "O":
            assert list(a) == list(b)
        else:
            assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fcmM")


def test_unstorable_coordinates_are_refused_at_encode_time():
    base = np.zeros((T, H, W), np.uint8)
    with pytest.raises(InvalidCubeError, match="coordinate 'lab'.*Decimal"):
        from decimal import Decimal

        encode_cube(cube(base, lab=("lab", np.array([Decimal(1)], dtype=object))))
    tz = pd.date_range("2020-01-01", periods=T, tz="UTC")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = cube(base).assign_coords(time=("time", tz))
    if not isinstance(ds["time"].dtype, np.dtype):
        with pytest.raises(InvalidCubeError, match="coordinate 'time'.*naive UTC"):
            encode_cube(ds)
    cftime = pytest.importorskip("cftime")
    mixed = np.array([cftime.DatetimeNoLeap(2020, 1, 1), cftime.Datetime360Day(2020, 1, 1)])
    with pytest.raises(InvalidCubeError, match="coordinate 'lab'.*calendars"):
        encode_cube(cube(base, lab=("lab", mixed)))


# -- one-line errors --------------------------------------------------------------------
def _with_aux(tmp_path):
    ds = cube(np.zeros((T, H, W), np.uint8))
    ds["dem"] = (("y", "x"), RNG.normal(0, 1, (H, W)), {"meta": {"a": 1, "b": [1, 2]}})
    return encode_cube(ds, LOSSY).to_folder(tmp_path / "c"), ds


def test_dict_attribute_on_aux_variable_round_trips(tmp_path):
    """Was: netCDF refused the dict attribute with a traceback."""
    folder, ds = _with_aux(tmp_path)
    out = decode_cube(EncodedCube.from_folder(folder))
    assert out["dem"].attrs["meta"] == {"a": 1, "b": [1, 2]}
    np.testing.assert_array_equal(out["dem"].values, ds["dem"].values)


def _rewrite(folder, name: str, data: bytes) -> None:
    """Replace a file and recompute its checksum, so only the decoder can object."""
    m = Manifest.from_json((folder / "manifest.json").read_bytes())
    (folder / name).write_bytes(data)
    if m.aux and m.aux.file == name:
        m.aux.nbytes, m.aux.sha256 = len(data), sha256(data)
    for s in m.streams:
        if s.file == name:
            s.nbytes, s.sha256 = len(data), sha256(data)
    (folder / "manifest.json").write_bytes(m.to_bytes())


def test_corrupt_aux_nc_is_one_line(tmp_path):
    folder, _ = _with_aux(tmp_path)
    _rewrite(folder, "aux.nc", b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(CorruptStreamError, match="aux.nc: not a readable netCDF"):
        decode_cube(EncodedCube.from_folder(folder))
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "decode", str(folder), str(tmp_path / "o.nc")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "aux.nc" in r.stderr


def test_mkv_without_video_stream_is_refused(tmp_path):
    from pipeline.codec.ffmpeg_engine import ffmpeg_exe

    # a Matroska stream (the raw carrier's streams have no container to hold audio)
    opts = dataclasses.replace(LOSSY, carrier="matroska")
    folder = encode_cube(cube(SMOOTH.astype(np.float32)), opts).to_folder(tmp_path / "c")
    mkv = next(folder.glob("*.mkv"))
    audio = tmp_path / "a.mkv"
    exe = ffmpeg_exe()
    assert exe is not None
    cmd = [exe, "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=8000", "-t", "0.1"]
    subprocess.run([*cmd, "-c:a", "flac", str(audio)], check=True)
    _rewrite(folder, mkv.name, audio.read_bytes())
    with pytest.raises(CorruptStreamError, match="holds no video stream"):
        decode_cube(EncodedCube.from_folder(folder))


def test_deep_or_huge_manifests_are_refused():
    good = encode_cube(cube(SMOOTH.astype(np.float32)), LOSSY).manifest
    raw = json.loads(good.to_json())
    nest = "[" * 100_000 + "]" * 100_000
    text = good.to_json().replace('"format"', f'"deep":{nest},"format"', 1)
    with pytest.raises(ManifestError, match="nested"):
        Manifest.from_json(text)
    with pytest.raises(ManifestError, match="nested"):
        Manifest.from_json(zstandard.ZstdCompressor().compress(text.encode()))
    for sizes in ({"time": 10**12}, {"y": 2**20, "x": 2**20}, {"time": -1}):
        bad = dict(raw, sizes={**raw["sizes"], **sizes})
        with pytest.raises(ManifestError, match="size|frames"):
            Manifest.from_json(json.dumps(bad))
    bad = dict(raw, streams=[dict(raw["streams"][0], frames=[[0, 10**9]])])
    with pytest.raises(ManifestError, match="frame run"):
        Manifest.from_json(json.dumps(bad))
    assert Manifest.from_json(json.dumps(dict(raw, attrs={"x": nest})))  # a string is fine
    bomb = zstandard.ZstdCompressor().compress(b" " * (65 << 20))
    with pytest.raises(ManifestError, match="larger than"):
        Manifest.from_json(bomb)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("keyint", 0),
        ("workers", 0),
        ("psnr", -5),
        ("crf", -1),
        ("crf", float("nan")),
        ("threads", -1),
        ("preset", "warp"),
    ],
)
def test_encode_options_name_the_bad_field(field, value):
    """Was: accepted; keyint 0 wrote an undecodable cube."""
    with pytest.raises(InvalidCubeError, match=f"^{field} "):
        EncodeOptions(**{field: value})
    with pytest.raises(InvalidCubeError, match="crf"):
        EncodeOptions(groups=(GroupSpec(("a",), crf=99),))


def test_an_exact_band_writes_a_manifest_json_can_hold():
    """A PSNR-target band the encoder measured as exact (AV1 at CRF 0 on a 12-bit twin at
    55 dB) has an infinite PSNR; the manifest stores None for it instead of failing."""
    from types import SimpleNamespace

    from pipeline.codec.describe import _measured_psnr

    exact = SimpleNamespace(psnr={"blue": float("inf"), "nir": 61.4})
    assert _measured_psnr([exact], "blue") is None
    assert _measured_psnr([exact], "nir") == 61.4
    assert _measured_psnr([exact], "red") is None
