"""Issue "Integrity": hostile inputs a tester found on b0a7930, each one a test here.

1. a band group's name became a stream file name before any check (``../..`` wrote a
   ``.mkv`` anywhere); names that collide as TACO children were accepted;
2. one all-NaN variable stopped a whole ``pack``;
3. 1 x 1 px cubes crashed the report picture after ``verification.json`` was written;
4. ``get``/``encode``/``decode`` onto an input, or onto an existing path, lost data or
   printed tracebacks;
5. float16 or unstorable names on decode, a full disk while packing, and flow commands
   with a wrong recipe or folder printed tracebacks (the flows after a minute of Prefect).

Every test failed on b0a7930. Small cubes, so each runs in seconds.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pipeline.codec.decode import decode_cube
from pipeline.codec.encode import encode_cube
from pipeline.codec.encoded import EncodedCube
from pipeline.codec.options import EncodeOptions, GroupSpec
from pipeline.errors import CubecastError, InvalidCubeError, RecipeError
from pipeline.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO / "datasets"
RNG = np.random.default_rng(7)


def cubecast(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO)), **env},
    )


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()  # progress lines ("[1/1] encoding") may come first
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == lines[-1:], r.stderr[-3000:]
    return lines[-1]


def cube(t: int = 3, h: int = 8, w: int = 8, dtype: str = "float32", **nan: str) -> xr.Dataset:
    """Two variables ``a`` and ``b``; ``nan={"b": "all"}`` makes b all NaN, ``"one"``
    NaN in all but one pixel."""
    data = {}
    for name in ("a", "b"):
        v = RNG.random((t, h, w)).astype(dtype)
        if nan.get(name) == "all":
            v[:] = np.nan
        elif nan.get(name) == "one":
            keep = v[1, h // 2, w // 2]
            v[:] = np.nan
            v[1, h // 2, w // 2] = keep
        data[name] = (("time", "y", "x"), v)
    times = pd.date_range("2020-01-01", periods=t, freq="5D")
    return xr.Dataset(data, coords={"time": times})


def roundtrip(ds: xr.Dataset, opts: EncodeOptions) -> xr.Dataset:
    return decode_cube(EncodedCube.from_bytes(encode_cube(ds, opts).to_bytes()))


def recipe_data(name: str = "dynamicearthnet") -> dict:
    return tomllib.loads((DATASETS / f"{name}.toml").read_text())


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        out = "".join(
            c
            if c.isprintable() and c not in '"\\'
            else f"\\u{ord(c):04x}"
            if ord(c) < 0x10000
            else f"\\U{ord(c):08x}"
            for c in v
        )
        return f'"{out}"'
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() and k.isascii() else toml_value(k)


def dump_toml(data: dict) -> str:
    """Tables as inline tables: enough for any recipe, mutated or not."""
    return "\n".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in data.items()) + "\n"


def write_recipe(tmp: Path, data: dict, stem: str = "hostile") -> Path:
    p = tmp / f"{stem}.toml"
    p.write_text(dump_toml(data))
    return p


# -- 1. band-group names -------------------------------------------------------------------
BAD_NAMES = [
    "../..",
    "../../escape",
    "/tmp/cubecast-escape",
    ".",
    "..",
    "a/b",
    "a\\b",
    "",
    " ",
    "\x00",
    "a\x00b",
    "rgb\n",
    "caf\u00e9",
    "\u0440\u0433\u0431",  # Cyrillic look-alike of "rgb"
    "x" * 300,
    "a.b",
    ".hidden",
    "-flag",
    "1abc",
    "C:evil",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_recipe_group_name_must_be_a_plain_identifier(tmp_path, name):
    """Was: loaded, then the name became ``<name>.mkv`` under the spool folder."""
    data = recipe_data()
    data["codec"]["groups"][0]["name"] = name
    with pytest.raises(RecipeError, match="codec.groups.0.name"):
        load_recipe(write_recipe(tmp_path, data))


@pytest.mark.parametrize(
    "names",
    [("a.b", "a_b"), ("rgb", "rgb"), ("RGB", "rgb"), ("s2", "S2")],
    ids=lambda n: "/".join(n),
)
def test_recipe_group_names_that_collide_as_taco_children_are_refused(tmp_path, names):
    data = recipe_data()
    data["codec"]["groups"] = [
        {"name": names[0], "bands": ["red", "green", "blue"]},
        {"name": names[1], "bands": ["nir"]},
    ]
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path, data))
    assert "\n" not in str(err.value)


def test_valid_group_names_still_load(tmp_path):
    data = recipe_data()
    for name in ("planet", "RGB_10m", "s2-l2a", "a" * 48):
        data["codec"]["groups"][0]["name"] = name
        assert load_recipe(write_recipe(tmp_path, data)).codec.groups[0].name == name


@pytest.mark.parametrize("name", ["../../escape", "/tmp/cubecast-escape-api", "a/b", ".."])
def test_api_group_name_is_refused_before_any_file_is_written(tmp_path, name):
    """Was: ffmpeg wrote ``<spool>/../../escape.mkv`` (outside the work folder), and the
    refusal came after the write."""
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    opts = EncodeOptions(crf=20, groups=(GroupSpec(("a", "b"), name=name),))
    with pytest.raises(InvalidCubeError, match="band group name"):
        encode_cube(cube(), opts, workdir=work)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == [], written
    assert not Path("/tmp/cubecast-escape-api.mkv").exists()


def test_api_group_names_that_collide_are_refused():
    opts = EncodeOptions(
        crf=20, groups=(GroupSpec(("a",), name="Band"), GroupSpec(("b",), name="band"))
    )
    with pytest.raises(InvalidCubeError, match="name the same files"):
        encode_cube(cube(), opts)


def test_cli_pack_with_a_path_as_group_name_is_one_line_and_writes_nothing(tmp_path):
    data = recipe_data()
    data["codec"]["groups"][0]["name"] = "../../../escape"
    data["source"]["location"] = str(tmp_path / "twin")
    recipe = write_recipe(tmp_path, data)
    r = cubecast("pack", str(recipe), str(tmp_path / "out" / "x" / "y"))
    assert "codec.groups.0.name" in one_line_error(r)
    assert not list(tmp_path.rglob("*.mkv")) and not (tmp_path / "out").exists()


# -- 2. all-NaN variables ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "opts",
    [EncodeOptions(crf=20), EncodeOptions(psnr=40), EncodeOptions(lossless=True)],
    ids=["crf", "psnr", "lossless"],
)
def test_all_nan_variable_decodes_all_nan(dtype, opts):
    """Was: InvalidCubeError "has no valid pixels", which stopped a whole pack."""
    ds = cube(dtype=dtype, b="all")
    dec = roundtrip(ds, opts)
    assert dec["b"].dtype == np.dtype(dtype) and np.isnan(dec["b"].values).all()
    assert np.abs(dec["a"].values - ds["a"].values).max() < 0.05


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("decorrelate", ["auto", "klt", "none"])
def test_all_nan_band_inside_a_multi_band_group(dtype, decorrelate):
    v = RNG.random((3, 3, 8, 8)).astype(dtype)
    v[:, 1] = np.nan
    ds = xr.Dataset(
        {"refl": (("time", "band", "y", "x"), v)},
        coords={"time": np.arange(3), "band": ["r", "g", "b"]},
    )
    group = (GroupSpec(("r", "g", "b"), name="rgb"),)
    for opts in (
        EncodeOptions(crf=20, groups=group, decorrelate=decorrelate),
        EncodeOptions(psnr=40, groups=group, decorrelate=decorrelate),
    ):
        dec = roundtrip(ds, opts)["refl"].values
        assert dec.dtype == np.dtype(dtype) and np.isnan(dec[:, 1]).all()
        assert not np.isnan(dec[:, [0, 2]]).any()
        assert np.nanmax(np.abs(dec - v)) < 0.05


def test_a_whole_recipe_group_of_nan_bands():
    ds = cube(a="all", b="all")
    dec = roundtrip(ds, EncodeOptions(psnr=45, groups=(GroupSpec(("a", "b"), name="ab"),)))
    assert np.isnan(dec["a"].values).all() and np.isnan(dec["b"].values).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_variable_nan_in_all_but_one_pixel(dtype):
    ds = cube(dtype=dtype, b="one")
    for opts in (EncodeOptions(crf=20), EncodeOptions(psnr=40), EncodeOptions(lossless=True)):
        dec = roundtrip(ds, opts)["b"].values
        assert np.array_equal(np.isnan(dec), np.isnan(ds["b"].values))
        assert dec[1, 4, 4] == pytest.approx(float(ds["b"].values[1, 4, 4]), abs=1e-6)


def test_all_inf_variable_comes_back_inf():
    ds = cube()
    ds["b"][:] = np.inf
    ds["b"][0, 0, 0] = -np.inf
    dec = roundtrip(ds, EncodeOptions(crf=20))["b"].values
    assert np.array_equal(dec, ds["b"].values)


def test_integer_band_all_nodata_comes_back_nodata():
    ds = cube()
    ds["c"] = (("time", "y", "x"), np.full((3, 8, 8), -9999, np.int16), {"_FillValue": -9999})
    dec = roundtrip(ds, EncodeOptions(crf=20))
    assert dec["c"].dtype == np.int16 and (dec["c"].values == -9999).all()


def test_pack_with_one_all_nan_cube_packs_every_cube(tmp_path):
    """Was: no shard for any cube."""
    src = tmp_path / "cubes"
    src.mkdir()
    normal = cube()
    normal["b"][0, 0, 0] = np.nan  # both cubes have a mask stream
    normal.to_netcdf(src / "c0.nc")
    cube(b="all").to_netcdf(src / "c1.nc")
    r = cubecast("pack", str(src), str(tmp_path / "shards"), "--crf", "20")
    assert r.returncode == 0, r.stderr[-3000:]
    from pipeline.taco.read import open_sample

    shard = str(tmp_path / "shards" / "cubes.tacozip")
    assert np.isnan(open_sample(shard, "c1")["b"].values).all()
    assert not np.isnan(open_sample(shard, "c0")["a"].values).any()


# -- 3. tiny frames, end to end ------------------------------------------------------------
def _crop_twin(twin: Path, h: int, w: int) -> None:
    """Cut every zarr cube of a deepextremecubes twin to h x w px (1 x 1, 1 x N, N x 1)."""
    for store in twin.glob("*.zarr"):
        ds = xr.open_zarr(store, decode_coords="all").isel(y=slice(0, h), x=slice(0, w)).load()
        for v in ds.variables.values():
            v.encoding = {k: x for k, x in v.encoding.items() if k in ("dtype", "_FillValue")}
        shutil.rmtree(store)
        ds.to_zarr(store, mode="w", zarr_format=2, consolidated=True)
    from pipeline.sources.twins import write_index

    write_index(twin)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_tiny_cubes_encode_pack_verify_and_publish(tmp_path, shape):
    """Was: the 1 x 1 px report picture crashed after verification.json was written, and
    publish then blamed "an older cubecast"."""
    twin, out = tmp_path / "twin", tmp_path / "out"
    r = cubecast(
        "synth", "deepextremecubes", str(twin), "--cubes", "1", "--frames", "4", "--size", "9"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    _crop_twin(twin, *shape)
    r = cubecast("pack", "deepextremecubes", str(out), "--source", str(twin), "--crf", "20")
    assert r.returncode == 0, r.stderr[-3000:]
    r = cubecast("verify", str(out), "--recipe", "deepextremecubes", "--source", str(twin))
    assert r.returncode == 0 and "PASS" in r.stdout, r.stderr[-3000:]
    assert (out / "report" / "sample.png").stat().st_size > 0
    r = cubecast("publish", str(out), "--to", str(tmp_path / "pub"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "pub" / "REPORT.md").is_file()


def test_sample_panel_of_a_one_pixel_rgb_frame(tmp_path):
    from pipeline.publish.report import sample_panel

    one = xr.Dataset({b: (("y", "x"), [[0.5]]) for b in ("r", "g", "b")})
    path = sample_panel(one, one, ["r", "g", "b"], tmp_path, "one pixel")
    assert path.stat().st_size > 0
    row = xr.Dataset({b: (("y", "x"), [[0.1, 0.2, np.nan]]) for b in ("r",)})
    assert sample_panel(row, row, ["r"], tmp_path, "one row").is_file()


# -- 4. outputs onto inputs ----------------------------------------------------------------
@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("enc")
    cube().to_netcdf(base / "in.nc")
    r = cubecast("encode", str(base / "in.nc"), str(base / "enc"), "--crf", "20")
    assert r.returncode == 0, r.stderr
    return base


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("shard")
    (base / "cubes").mkdir()
    cube().to_netcdf(base / "cubes" / "c0.nc")
    r = cubecast("pack", str(base / "cubes"), str(base / "out"), "--crf", "20")
    assert r.returncode == 0, r.stderr
    return base / "out" / "cubes.tacozip"


def test_get_onto_its_own_shard_is_refused(shard):
    """Was: the shard was replaced by a netCDF of one sample."""
    before = shard.read_bytes()
    assert "is the input" in one_line_error(cubecast("get", str(shard), "c0", str(shard)))
    assert shard.read_bytes() == before
    link = shard.with_name("link.tacozip")
    link.unlink(missing_ok=True)
    link.symlink_to(shard)
    assert "is the input" in one_line_error(cubecast("get", str(link), "c0", str(shard)))
    assert shard.read_bytes() == before


def test_get_into_the_tacocat_folder_is_refused(shard):
    tacocat = shard.parent / ".tacocat"
    r = cubecast("get", str(tacocat), "c0", str(tacocat / "x.nc"))
    assert "inside the input" in one_line_error(r)
    assert not (tacocat / "x.nc").exists()


def test_get_onto_an_existing_file_needs_overwrite(shard, tmp_path):
    out = tmp_path / "c0.nc"
    out.write_text("keep me")
    assert "--overwrite" in one_line_error(cubecast("get", str(shard), "c0", str(out)))
    assert out.read_text() == "keep me"
    r = cubecast("get", str(shard), "c0", str(out), "--overwrite")
    assert r.returncode == 0, r.stderr
    assert list(xr.open_dataset(out).data_vars) == ["a", "b"]


def test_encode_onto_its_input_is_refused(encoded):
    src = encoded / "in.nc"
    before = src.read_bytes()
    assert "is the input" in one_line_error(cubecast("encode", str(src), str(src)))
    assert "is the input" in one_line_error(cubecast("encode", str(src), str(src), "--overwrite"))
    assert src.read_bytes() == before


def test_encode_into_an_existing_folder_or_tar_is_one_line(encoded, tmp_path):
    r = cubecast("encode", str(encoded / "in.nc"), str(encoded / "enc"))
    assert "not empty" in one_line_error(r)
    tar = tmp_path / "c.tar"
    tar.write_text("keep me")
    assert "--overwrite" in one_line_error(cubecast("encode", str(encoded / "in.nc"), str(tar)))
    assert tar.read_text() == "keep me"


def test_decode_onto_its_input_or_an_existing_path_is_refused(encoded, tmp_path):
    enc = encoded / "enc"
    manifest = next(enc.iterdir())
    assert "inside the input" in one_line_error(
        cubecast("decode", str(enc), str(manifest), "--overwrite")
    )
    assert "is the input" in one_line_error(cubecast("decode", str(enc), str(enc)))
    folder = tmp_path / "folder"
    folder.mkdir()
    assert "folder" in one_line_error(cubecast("decode", str(enc), str(folder)))
    out = tmp_path / "out.nc"
    out.write_text("keep me")
    assert "--overwrite" in one_line_error(cubecast("decode", str(enc), str(out)))
    assert out.read_text() == "keep me"


def test_pack_into_its_input_folder_is_refused(tmp_path):
    src = tmp_path / "cubes"
    src.mkdir()
    cube().to_netcdf(src / "c0.nc")
    for out in (src, src / "shards"):
        assert "input" in one_line_error(cubecast("pack", str(src), str(out), "--crf", "20"))
    assert sorted(p.name for p in src.iterdir()) == ["c0.nc"]


def test_pack_and_verify_inside_the_recipe_source_are_refused(tmp_path):
    twin = tmp_path / "twin"
    twin.mkdir()
    r = cubecast("pack", "dynamicearthnet", str(twin / "out"), "--source", str(twin))
    assert "is inside the input" in one_line_error(r)
    r = cubecast("verify", str(twin), "--recipe", "dynamicearthnet", "--source", str(twin))
    assert "is the input" in one_line_error(r)
    assert list(twin.iterdir()) == []


# -- 5. one line, no half-written output ---------------------------------------------------
def test_decode_float16_cube_is_one_line_or_zarr(tmp_path):
    """Was: a netCDF4 TypeError traceback (netCDF has no float16)."""
    ds = cube(dtype="float16")
    enc = tmp_path / "enc"
    encode_cube(ds, EncodeOptions(crf=20)).to_folder(enc)
    line = one_line_error(cubecast("decode", str(enc), str(tmp_path / "out.nc")))
    assert "float16" in line and ".zarr" in line
    assert [p.name for p in tmp_path.iterdir()] == ["enc"]
    r = cubecast("decode", str(enc), str(tmp_path / "out.zarr"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert xr.open_zarr(tmp_path / "out.zarr")["a"].dtype == np.float16


@pytest.mark.parametrize("name", ["a/b", "tab\there"])
def test_decode_a_name_netcdf_cannot_hold_is_one_line(tmp_path, name):
    ds = cube().rename({"b": name})
    enc = tmp_path / "enc"
    encode_cube(ds, EncodeOptions(crf=20)).to_folder(enc)
    line = one_line_error(cubecast("decode", str(enc), str(tmp_path / "out.nc")))
    assert repr(name) in line
    assert [p.name for p in tmp_path.iterdir()] == ["enc"]


def test_full_disk_while_packing_is_one_line_and_replaces_nothing(tmp_path, monkeypatch):
    """Was: a tacotoolbox traceback; a ZIP writer that hits ENOSPC."""
    from typer.testing import CliRunner

    import pipeline.taco.pack as pack_mod
    from pipeline.cli import app

    src = tmp_path / "cubes"
    src.mkdir()
    cube().to_netcdf(src / "c0.nc")
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.tacozip").write_text("the earlier pack")

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "x.tacozip"))

    monkeypatch.setattr(pack_mod, "write_shard", full)
    r = CliRunner().invoke(app, ["pack", str(src), str(out), "--crf", "20"])
    assert isinstance(r.exception, CubecastError), r.exception
    assert "No space left" in str(r.exception) and "\n" not in str(r.exception)
    assert sorted(p.name for p in out.iterdir()) == [".cubecast.lock", "old.tacozip"]
    assert (out / "old.tacozip").read_text() == "the earlier pack"


def test_full_disk_on_a_real_tiny_filesystem(tmp_path):
    """A 1 MiB tmpfs (root only; skipped elsewhere): the shard does not fit."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)])
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        src = tmp_path / "cubes"
        src.mkdir()
        noise = np.random.default_rng(1).random((6, 128, 128)).astype("float32")
        times = pd.date_range("2020-01-01", periods=6)
        xr.Dataset({"v": (("time", "y", "x"), noise)}, coords={"time": times}).to_netcdf(
            src / "noise.nc"
        )
        (mnt / "filler").write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))
        r = cubecast("pack", str(src), str(mnt / "out"), "--crf", "0")
        assert "cannot write shards" in one_line_error(r)
        left = [p.name for p in (mnt / "out").iterdir()]
        assert left == [".cubecast.lock"], left
    finally:
        subprocess.run(["umount", str(mnt)])


def _no_prefect(monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.runtime

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("Prefect was started")

    monkeypatch.setattr(flows.runtime, "prefect_api", refuse)


@pytest.mark.parametrize(
    "args, said",
    [
        (["run", "no-such-recipe"], "no such recipe"),
        (["demo", "--dataset", "no-such-recipe"], "no such recipe"),
        (["run", "dynamicearthnet", "--source", "{tmp}/nowhere"], "does not exist"),
        (["run", "dynamicearthnet", "--source", "{tmp}", "--out", "{file}/x"], "not a folder"),
        (["run", "dynamicearthnet", "--source", "{tmp}", "--to", "{file}"], "not a folder"),
        (["run", "dynamicearthnet", "--source", "{tmp}", "--out", "{tmp}/w"], "inside"),
        (["demo", "--out", "{file}/x"], "not a folder"),
        (
            ["run", "dynamicearthnet", "--source", "{tmp}", "--incremental", "--max-disk", "x"],
            "--max-disk",
        ),
    ],
)
def test_flow_arguments_fail_fast_without_prefect(tmp_path, monkeypatch, args, said):
    """Was: a Prefect traceback after a minute of server start-up."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    _no_prefect(monkeypatch)
    (tmp_path / "file").write_text("")
    args = [a.format(tmp=tmp_path, file=tmp_path / "file") for a in args]
    t0 = time.monotonic()
    r = CliRunner().invoke(app, args)
    assert isinstance(r.exception, CubecastError), r.output
    assert said in str(r.exception) and "\n" not in str(r.exception)
    assert time.monotonic() - t0 < 10


def test_flow_command_with_a_wrong_recipe_is_one_line_in_seconds(tmp_path):
    """Through the installed entry point: no server start, one line, a few seconds."""
    t0 = time.monotonic()
    r = cubecast("run", "no-such-recipe", cwd=tmp_path, PREFECT_HOME=str(tmp_path / "ph"))
    assert "no such recipe" in one_line_error(r)
    assert time.monotonic() - t0 < 20
    assert not (tmp_path / "ph").exists() or not any((tmp_path / "ph").rglob("*.db"))


# -- 6. recipe fuzz ------------------------------------------------------------------------
def _mutations(rng: random.Random) -> list:
    return [
        "../..", "/etc", "", ".", "a.b", "\x00", "\u00e9", "x" * 1000, "rgb", "RGB",
        1e400, -1e400, float("nan"), -1, 0, 2**70, 1e-320, True, [], {}, [[[[["deep"]]]]],
        {"a": {"b": {"c": {"d": 1}}}}, ["red", "red"], ["nosuchband"], ["red"] * 40,
        rng.random() * 200, "4GB", "0MB", "12", "\n", "a" * 48, "a" * 49,
    ]  # fmt: skip


def _paths(data: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, (*prefix, i))
    return out


def _set(data: dict, path: tuple, value: object) -> None:
    node = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def _deep(n: int) -> object:
    v: object = 1
    for _ in range(n):
        v = [v]
    return v


@pytest.mark.parametrize("seed", range(6))
def test_mutated_recipes_load_or_raise_recipe_error(tmp_path, seed):
    """Valid recipes with group names, band lists, thresholds and numbers mutated: every
    load succeeds or raises RecipeError, never another exception."""
    rng = random.Random(seed)
    bases = sorted(DATASETS.glob("*.toml"))
    loaded = refused = 0
    for i in range(40):
        data = tomllib.loads(rng.choice(bases).read_text())
        for _ in range(rng.randint(1, 3)):
            paths = _paths(data)
            focus = [p for p in paths if any(k in p for k in ("groups", "verify", "codec"))]
            path = rng.choice(focus if focus and rng.random() < 0.7 else paths)
            value = rng.choice(_mutations(rng))
            if rng.random() < 0.1:
                value = _deep(rng.choice([10, 50, 150]))
            _set(data, path, value)
        groups = (
            data.get("codec", {}).get("groups") if isinstance(data.get("codec"), dict) else None
        )
        if rng.random() < 0.2 and isinstance(groups, list):
            groups.append({"name": rng.choice(_mutations(rng)), "bands": ["red"]})
        try:
            text = dump_toml(data)
        except (TypeError, RecursionError):
            continue
        p = tmp_path / f"r{i}.toml"
        p.write_text(text)
        try:
            load_recipe(p)
            loaded += 1
        except RecipeError as exc:
            assert "\n" not in str(exc).strip() or str(exc).count("\n") == 0
            refused += 1
    assert refused > 0


def test_deeply_nested_recipe_is_a_recipe_error(tmp_path):
    p = tmp_path / "deep.toml"
    p.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(RecipeError):
        load_recipe(p)
    q = tmp_path / "source.toml"
    q.write_text('source = 5\nname = "x"\n')
    with pytest.raises(RecipeError):
        load_recipe(q, location="/tmp")
