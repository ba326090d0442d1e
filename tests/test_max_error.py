"""Error-bounded mode (``--max-error``): |x - x'| <= E on every valid value, NaN/nodata and
+-inf exact, crafted correction layers refused, verify catching a broken bound."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zstandard

from pipeline.codec.decode import decode_cube
from pipeline.codec.encode import encode_cube
from pipeline.codec.encoded import EncodedCube, MemoryStore, sha256
from pipeline.codec.errorbound import CODEC, MaxError, correction_chunk
from pipeline.codec.manifest import Manifest
from pipeline.codec.metrics import compare_encoded
from pipeline.codec.options import EncodeOptions, GroupSpec
from pipeline.errors import CorruptStreamError, CubecastError, InvalidCubeError, ManifestError
from pipeline.publish.verify import check_bands, max_error_bounds

FAST = {"max_error_offsets": (6.0,), "codec": "libx265", "hedge": False}


def _cube(values: np.ndarray, name: str = "v", attrs: dict | None = None) -> xr.Dataset:
    t, h, w = values.shape
    return xr.Dataset(
        {name: (("time", "y", "x"), values, attrs or {})},
        coords={
            "time": pd.date_range("2020-01-01", periods=t),
            "y": np.arange(h),
            "x": np.arange(w),
        },
    )


def _field(t: int = 12, h: int = 24, w: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.sin(xx / 5.0) + np.cos(yy / 7.0)
    return np.stack([base * (1 + 0.1 * i) + 0.05 * rng.standard_normal((h, w)) for i in range(t)])


def _max_err(orig: np.ndarray, dec: np.ndarray, valid: np.ndarray) -> float:
    """The real max |x - x'| over valid values, in float64, independently of the encoder."""
    return float(np.abs(orig[valid].astype(np.float64) - dec[valid].astype(np.float64)).max())


def _encode(ds: xr.Dataset, bound: object, **kw: object) -> EncodedCube:
    return encode_cube(ds, EncodeOptions(max_error=bound, **{**FAST, **kw}))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bound", [0.01, "0.1%", "2%"])
def test_float_bound_holds(dtype: type, bound: object) -> None:
    x = _field().astype(dtype) * 10
    enc = _encode(_cube(x), bound)
    dec = decode_cube(enc)["v"].values
    assert dec.dtype == dtype
    spec = MaxError.parse(bound)
    e = spec.absolute(x.min(), x.max())
    valid = np.ones(x.shape, bool)
    assert _max_err(x, dec, valid) <= e
    c = enc.manifest.channels[0]
    assert c.max_error == pytest.approx(e) and c.max_error_reached <= e
    raw = any(s.carrier == "raw" for s in enc.manifest.streams)  # raw streams need version 5
    assert enc.manifest.version == (5 if raw else 4)
    assert any(s.codec == CODEC for s in enc.manifest.streams)


def test_bound_is_what_the_video_alone_misses() -> None:
    """The correction layer is doing the work: the same video without it breaks the bound."""
    x = _field(seed=3) * 10
    enc = _encode(_cube(x), "0.2%", max_error_offsets=(24.0,))  # a coarse video
    e = enc.manifest.channels[0].max_error
    m = enc.manifest
    bare = m.model_copy(
        update={
            "channels": [
                c.model_copy(update={"correction_stream": None, "correction_plane": None})
                for c in m.channels
            ]
        }
    )
    video = decode_cube(EncodedCube(bare, enc.store))["v"].values
    assert _max_err(x, video, np.ones(x.shape, bool)) > e
    assert _max_err(x, decode_cube(enc)["v"].values, np.ones(x.shape, bool)) <= e


@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
def test_integer_bands(dtype: type) -> None:
    rng = np.random.default_rng(1)
    x = (_field() * 3000 + 9000 + rng.integers(0, 40, (12, 24, 20))).astype(dtype)
    ds = _cube(x)
    for bound, allowed in ((3.7, 3), (0.5, 0), (0.3, 0)):
        dec = decode_cube(_encode(ds, bound))["v"].values
        assert dec.dtype == dtype
        err = np.abs(x.astype(np.int64) - dec.astype(np.int64)).max()
        assert err <= allowed, (bound, err)


def test_nan_gaps_and_infinities_exact() -> None:
    x = _field().astype(np.float32)
    x[2:5, 3:9, 4:10] = np.nan
    x[7] = np.nan  # a whole frame
    x[1, 0, 0], x[3, 20, 15], x[9, 5, 5] = np.inf, -np.inf, np.inf
    enc = _encode(_cube(x), "0.5%")
    dec = decode_cube(enc)["v"].values
    finite = np.isfinite(x)
    assert np.array_equal(np.isnan(dec), np.isnan(x))
    assert np.array_equal(dec[np.isinf(x)], x[np.isinf(x)])
    e = 0.005 * float(x[finite].max() - x[finite].min())
    assert _max_err(x, dec, finite) <= e


def test_integer_nodata_exact() -> None:
    x = (_field() * 1000 + 2000).astype(np.int16)
    x[3, 2:6, 2:6] = -9999
    dec = decode_cube(_encode(_cube(x, attrs={"_FillValue": -9999}), 2.0))["v"].values
    nod = x == -9999
    assert np.array_equal(dec == -9999, nod)
    assert np.abs(x[~nod].astype(int) - dec[~nod].astype(int)).max() <= 2


def test_heavy_tailed_band() -> None:
    rng = np.random.default_rng(7)
    x = (_field() + rng.standard_cauchy((12, 24, 20)) * 0.05).astype(np.float32)
    x = np.clip(x, -1e4, 1e4)
    enc = _encode(_cube(x), 0.02)
    dec = decode_cube(enc)["v"].values
    assert _max_err(x, dec, np.ones(x.shape, bool)) <= 0.02


def test_constant_band_is_exact() -> None:
    x = np.full((6, 8, 10), 273.15, dtype=np.float32)
    enc = _encode(_cube(x), "1%")
    dec = decode_cube(enc)["v"].values
    assert np.array_equal(dec, x)
    assert enc.manifest.channels[0].max_error == 0.0


def test_tiny_frames() -> None:
    x = _field(t=5, h=3, w=5).astype(np.float32)
    enc = _encode(_cube(x), "0.2%")
    dec = decode_cube(enc)["v"].values
    e = 0.002 * float(x.max() - x.min())
    assert _max_err(x, dec, np.ones(x.shape, bool)) <= e


def test_two_bands_groups_and_time_window() -> None:
    a, b = _field(seed=1) * 50, _field(seed=2).astype(np.float32)
    ds = xr.merge([_cube(a, "a"), _cube(b, "b")])
    opts = EncodeOptions(
        max_error=0.5,
        groups=(GroupSpec(("b",), name="bee", max_error="0.1%"),),
        **FAST,  # type: ignore[arg-type]
    )
    enc = encode_cube(ds, opts)
    dec = decode_cube(enc)
    full = np.ones(a.shape, bool)
    assert _max_err(a, dec["a"].values, full) <= 0.5
    eb = 0.001 * float(b.max() - b.min())
    assert _max_err(b, dec["b"].values, full) <= eb
    win = decode_cube(enc, variables=["b"], time=slice(3, 9))["b"].values
    assert _max_err(b[3:9], win, full[3:9]) <= eb


def test_offsets_keep_the_smallest() -> None:
    x = _field(seed=4) * 10
    ds = _cube(x)
    one = {**FAST, "max_error_offsets": (0.0,)}
    two = {**FAST, "max_error_offsets": (0.0, 12.0)}
    a = encode_cube(ds, EncodeOptions(max_error="0.1%", **one))  # type: ignore[arg-type]
    b = encode_cube(ds, EncodeOptions(max_error="0.1%", **two))  # type: ignore[arg-type]
    assert b.nbytes <= a.nbytes


def test_walk_offsets_finds_the_minimum_of_a_convex_cost() -> None:
    from pipeline.codec.encode import walk_offsets

    grid = (-12.0, -6.0, 0.0, 6.0, 12.0, 18.0, 24.0, 30.0)
    for low in grid:
        calls: list[float] = []

        def cost(o: float, low: float = low, calls: list[float] = calls) -> int:
            calls.append(o)
            return int(abs(o - low) * 10)

        assert walk_offsets(grid, cost) == low
        assert len(set(calls)) <= abs(grid.index(low) - 2) + 3


def test_decode_is_deterministic_across_threads(tmp_path: Path) -> None:
    """The reconstruction the encoder checked is the one readers get, whatever their
    thread counts (video decoders are bit-exact; the correction is elementwise)."""
    x = _field(seed=5).astype(np.float32) * 7
    _encode(_cube(x), "0.05%").to_folder(tmp_path / "c")
    code = (
        "import sys, numpy as np; from pipeline import EncodedCube, decode_cube; "
        "np.save(sys.argv[2], decode_cube(EncodedCube.from_folder(sys.argv[1]))['v'].values)"
    )
    outs = []
    for threads in ("1", "4"):
        env = {
            **os.environ,
            "CUBECAST_DECODE_THREADS": threads,
            "OMP_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
        }
        out = tmp_path / f"d{threads}.npy"
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "c"), str(out)], env=env, check=True
        )
        outs.append(np.load(out))
    assert np.array_equal(outs[0], outs[1])
    e = 0.0005 * float(x.max() - x.min())
    assert _max_err(x, outs[0], np.ones(x.shape, bool)) <= e


# -- the edge: options, CLI, recipes ---------------------------------------------------------
@pytest.mark.parametrize(
    "bad", ["nan", "inf", "-1", "0", "0%", "101%", "abc", "1e400", "", True, float("nan")]
)
def test_bad_bounds_refused(bad: object) -> None:
    with pytest.raises(InvalidCubeError, match="max_error"):
        EncodeOptions(max_error=bad)  # type: ignore[arg-type]


def test_parse_forms() -> None:
    assert MaxError.parse("0.1%") == MaxError(0.001, relative=True)
    assert MaxError.parse("0.01") == MaxError(0.01) == MaxError.parse(0.01)
    assert MaxError.parse("100%").absolute(2.0, 4.0) == 2.0
    with pytest.raises(InvalidCubeError, match="lossless"):
        EncodeOptions(max_error=0.1, lossless=True)
    with pytest.raises(InvalidCubeError, match="lossless"):
        GroupSpec(("a",), max_error=0.1, lossless=True)


def test_64bit_integers_refused() -> None:
    x = (_field() * 1000).astype(np.int64)
    with pytest.raises(InvalidCubeError, match="64-bit"):
        _encode(_cube(x), 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-error", "0"], "finite and above 0"),
        (["--max-error", "150%"], "at most 100%"),
        (["--max-error", "nan"], "finite and above 0"),
        (["--max-error", "x"], "must be a number"),
        (["--max-error", "0.1", "--lossless"], "--lossless"),
        (["--max-error", "0.1", "--crf", "20"], "--crf"),
    ],
)
def test_cli_refuses(tmp_path: Path, args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    src = tmp_path / "c.nc"
    _cube(_field(t=3, h=4, w=4)).to_netcdf(src)
    r = CliRunner().invoke(app, ["encode", str(src), str(tmp_path / "out"), *args])
    assert r.exit_code != 0 and message in r.output + str(r.exception), r.output


def test_cli_encode_info(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    x = _field(t=6, h=16, w=16).astype(np.float32)
    src = tmp_path / "c.nc"
    _cube(x).to_netcdf(src)
    runner = CliRunner()
    out = tmp_path / "out"
    r = runner.invoke(
        app, ["encode", str(src), str(out), "--max-error", "0.5%", "--codec", "libx265"]
    )
    assert r.exit_code == 0, r.output
    dec = decode_cube(EncodedCube.from_folder(out))["v"].values
    assert _max_err(x, dec, np.ones(x.shape, bool)) <= 0.005 * float(x.max() - x.min())
    r = runner.invoke(app, ["info", str(out)])
    assert r.exit_code == 0 and "max error" in r.output and "corrections" in r.output


def test_recipe_max_error() -> None:
    from pipeline.recipe_tables import CodecSpec, GroupRecipe

    spec = CodecSpec(max_error="0.1%", groups=[GroupRecipe(name="g", bands=["a"], max_error=2)])
    assert spec.max_error == "0.1%"
    with pytest.raises(ValueError, match="max_error"):
        CodecSpec(max_error="-3")
    with pytest.raises(ValueError, match="lossless"):
        GroupRecipe(name="g", bands=["a"], max_error=1, lossless=True)


# -- untrusted correction layers -------------------------------------------------------------
def _files(enc: EncodedCube) -> tuple[Manifest, dict[str, bytes], str]:
    files = {n: enc.read_file(n) for n in enc.filenames()}
    name = next(s.name for s in enc.manifest.streams if s.codec == CODEC)
    return enc.manifest, files, name


def _with_layer(m: Manifest, files: dict[str, bytes], name: str, blob: bytes, **kw: object):
    s = m.stream(name)
    files = {**files, s.file: blob}
    streams = [
        x.model_copy(update={"nbytes": len(blob), "sha256": sha256(blob), **kw})
        if x.name == name
        else x
        for x in m.streams
    ]
    return EncodedCube(m.model_copy(update={"streams": streams}), MemoryStore(files))


def test_crafted_correction_chunks_refused() -> None:
    x = _field(t=4, h=8, w=8) * 10
    m, files, name = _files(_encode(_cube(x), "0.1%"))
    shape = (1, 8, 8)
    cctx = zstandard.ZstdCompressor()
    huge = bytes([4]) + cctx.compress(b"\0" * (1 << 20))  # claims 1 MiB, not 4 x 64 x 4
    wrong_width = bytes([3]) + cctx.compress(b"\0" * 256)
    no_size = bytes([1]) + zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * 256)
    extra = bytes([1]) + cctx.compress(b"\0" * 256) + b"junk"
    for blob, msg in (
        (huge, "declares"),
        (wrong_width, "code width"),
        (no_size, "no size"),
        (b"", "empty"),
        (extra, "decompress"),
    ):
        with pytest.raises(CorruptStreamError, match=msg):
            correction_chunk(blob, 4, shape, "k", "x", 0)
        with pytest.raises(CorruptStreamError, match="chunk 0"):
            decode_cube(_with_layer(m, files, name, blob, chunk_offsets=[0]))
    # a chunk offset past the file, and a frame count the layer does not hold
    good = files[m.stream(name).file]
    with pytest.raises(CorruptStreamError):
        decode_cube(_with_layer(m, files, name, good, chunk_offsets=[0, 10**9]))
    short = bytes([1]) + cctx.compress(b"\0" * 64 * 3)
    with pytest.raises(CorruptStreamError, match="declares"):
        decode_cube(_with_layer(m, files, name, short, chunk_offsets=[0]))


def test_crafted_manifest_fields_refused() -> None:
    x = _field(t=4, h=8, w=8) * 10
    enc = _encode(_cube(x), "0.1%")
    raw = json.loads(enc.manifest.to_json())
    for field, value in (
        ("correction_plane", -1),
        ("correction_step", -0.5),
        ("max_error", float("inf")),
    ):
        bad = json.loads(json.dumps(raw))
        bad["channels"][0][field] = value if value != float("inf") else 1e400
        text = json.dumps(bad).replace("Infinity", "1e400")
        with pytest.raises(ManifestError):
            Manifest.from_json(text)
    bad = json.loads(json.dumps(raw))
    bad["channels"][0]["correction_plane"] = 5  # past the layer's planes
    with pytest.raises(CubecastError):
        decode_cube(EncodedCube(Manifest.model_validate(bad), enc.store))


def test_verify_catches_tampered_corrections() -> None:
    x = _field(t=6, h=12, w=12) * 10
    ds = _cube(x)
    enc = _encode(ds, "0.2%")
    m, files, name = _files(enc)
    ok = check_bands("s", compare_encoded(ds, enc), lambda band: 10.0, max_error_bounds(m))
    assert all(c.passed for c in ok) and ok[0].max_abs_error <= ok[0].max_error
    # every code shifted by one step: each value off by about 2E, checksums made to match
    codes = np.ones((6, 1, 12, 12), dtype=np.int8).tobytes()
    blob = bytes([1]) + zstandard.ZstdCompressor().compress(codes)
    tampered = _with_layer(m, files, name, blob, chunk_offsets=[0])
    bad = check_bands("s", compare_encoded(ds, tampered), lambda band: 10.0, max_error_bounds(m))
    assert not bad[0].passed
    assert "band 'v'" in bad[0].failure() and "max_error" in bad[0].failure()


def test_card_states_the_bound_and_the_error_reached() -> None:
    from pipeline.publish.card_sections import error_bound_paragraph
    from pipeline.publish.verify import BandCheck, Verification
    from pipeline.recipe import load_recipe

    recipe = load_recipe("dynamicearthnet")
    v = Verification()
    assert error_bound_paragraph(recipe, v) == ""
    codec = recipe.codec.model_copy(update={"max_error": "0.1%"})
    bounded = recipe.model_copy(update={"codec": codec})
    v.checks = [
        BandCheck("a", "red", "continuous", 60.0, 40.0, False, True, 2.5, 2.4),
        BandCheck("b", "red", "continuous", 61.0, 40.0, False, True, 3.0, 1.0),
    ]
    text = error_bound_paragraph(bounded, v)
    assert "max_error` = 0.1%" in text and "| red | 3 | 2.4 |" in text


def test_decode_windows_smaller_than_the_layer_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoder decodes a frame at a time on large frames; the layer is the same."""
    from pipeline.codec import corrections

    x = _field(t=40, h=10, w=12).astype(np.float32)
    whole = _encode(_cube(x), "0.3%")
    monkeypatch.setattr(corrections, "WINDOW_PX", 1)
    framewise = _encode(_cube(x), "0.3%")
    a, b = decode_cube(whole)["v"].values, decode_cube(framewise)["v"].values
    assert np.array_equal(a, b)
    assert _max_err(x, b, np.ones(x.shape, bool)) <= 0.003 * float(x.max() - x.min())


def test_with_a_psnr_floor_both_hold() -> None:
    from pipeline.codec.metrics import compare

    x = (_field(seed=8) * 10).astype(np.float32)
    ds = _cube(x)
    enc = encode_cube(ds, EncodeOptions(psnr=55.0, max_error="1%", **FAST))  # type: ignore[arg-type]
    dec = decode_cube(enc)
    assert compare(ds, dec)[0].psnr >= 55.0
    assert _max_err(x, dec["v"].values, np.ones(x.shape, bool)) <= 0.01 * float(x.max() - x.min())


def test_recipe_publish_verifies_and_states_the_bound(tmp_path: Path) -> None:
    """A recipe with ``max_error`` packs, verifies each band's bound on the decoded shards,
    and its card states the bound and the error reached."""
    from pipeline.publish.incremental import publish_incremental
    from pipeline.publish.verify import BandCheck, Verification
    from pipeline.recipe import parse_recipe
    from pipeline.sources.twins import write_dynamicearthnet
    from tests.test_incremental import recipe_for

    twin = tmp_path / "twin"
    write_dynamicearthnet(twin, cubes=1, frames=4, size=16, seed=3, progress=False)
    data = recipe_for(str(twin), 1, psnr_min=20.0).model_dump(exclude_none=True)
    data["codec"]["max_error"] = "1%"
    target = tmp_path / "target"
    publish_incremental(parse_recipe(data), str(target), tmp_path / "work", log=lambda s: None)
    record = json.loads((target / "verification" / "batch-00001.json").read_text())
    v = Verification([BandCheck(**c) for c in record["checks"]])
    bounded = [c for c in v.checks if c.max_error is not None]
    assert v.passed and bounded
    assert all(c.max_abs_error is not None and c.max_abs_error <= c.max_error for c in bounded)
    card = (target / "README.md").read_text()
    assert "Error-bounded mode" in card and "max abs error reached" in card


def test_a_tiny_bound_on_a_float_band() -> None:
    """1e-6 of the range: past any video floor (capped where 12-bit codes reach), so the
    corrections carry it, with finer videos tried too."""
    x = (_field(t=4, h=8, w=8, seed=9) * 10).astype(np.float64)
    enc = encode_cube(_cube(x), EncodeOptions(max_error="0.0001%", codec="libx265"))
    e = 1e-6 * float(x.max() - x.min())
    assert _max_err(x, decode_cube(enc)["v"].values, np.ones(x.shape, bool)) <= e
