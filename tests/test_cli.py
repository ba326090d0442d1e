from __future__ import annotations

import subprocess
import sys

import numpy as np
import xarray as xr


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True
    )


def test_encode_info_decode_netcdf(eolearn, tmp_path):
    src = tmp_path / "cube.nc"
    eolearn.to_netcdf(src)
    r = run("encode", str(src), str(tmp_path / "enc"), "--psnr", "45")
    assert r.returncode == 0, r.stderr
    r = run("info", str(tmp_path / "enc"))
    assert r.returncode == 0 and "ndvi" in r.stdout and "bpppb" in r.stdout
    r = run("decode", str(tmp_path / "enc"), str(tmp_path / "out.nc"))
    assert r.returncode == 0, r.stderr
    out = xr.open_dataset(tmp_path / "out.nc")
    assert out.CLM.dtype == np.uint8 and out.NDVI.dtype == np.float32
    np.testing.assert_array_equal(out.CLM.values, eolearn.CLM.values)
    ds = xr.open_dataset(tmp_path / "enc", engine="cubecast")
    assert list(ds.data_vars) == list(eolearn.data_vars)


def test_encode_zarr_input(s2cube, tmp_path):
    s2cube.to_zarr(tmp_path / "in.zarr")
    r = run("encode", str(tmp_path / "in.zarr"), str(tmp_path / "enc.tar"), "--crf", "20")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "enc.tar").is_file()


def test_cli_errors_are_one_line(tmp_path):
    r = run("encode", str(tmp_path / "missing.nc"), str(tmp_path / "o"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no such file" in r.stderr
    assert not (tmp_path / "o").exists()
    bad = tmp_path / "bad.nc"
    xr.Dataset({"a": (("step", "y", "x"), np.zeros((2, 2, 2)))}).to_netcdf(bad)
    r = run("encode", str(bad), str(tmp_path / "o"))
    assert r.returncode == 2 and "no time dimension" in r.stderr
    assert not (tmp_path / "o").exists()


def test_pack_ls_get(s2cube, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        s2cube.isel(time=slice(i, i + 6)).to_netcdf(src / f"cube{i}.nc")
    r = run("pack", str(src), str(tmp_path / "shards"), "--id", "twins", "--crf", "10")
    assert r.returncode == 0, r.stderr
    shard = tmp_path / "shards" / "twins.tacozip"
    r = run("ls", str(shard))
    assert r.returncode == 0 and "cube0" in r.stdout and "cube1" in r.stdout, r.stderr
    r = run("get", str(shard), "cube1", str(tmp_path / "c1.nc"), "-v", "SCL")
    assert r.returncode == 0, r.stderr
    assert list(xr.open_dataset(tmp_path / "c1.nc").data_vars) == ["SCL"]


def test_synth_pack_verify_publish_cli(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    runner = CliRunner()
    twin = tmp_path / "twin"
    r = runner.invoke(
        app,
        ["synth", "dynamicearthnet", str(twin), "--cubes", "1", "--frames", "12", "--size", "64"],
    )
    assert r.exit_code == 0, r.output
    assert len(list((twin / "planet").glob("*/PF-SR/*.tif"))) == 12
    out = tmp_path / "out"
    r = runner.invoke(app, ["pack", "dynamicearthnet", str(out), "--source", str(twin)])
    assert r.exit_code == 0, r.output
    assert list(out.glob("*.tacozip"))
    r = runner.invoke(
        app, ["verify", str(out), "--recipe", "dynamicearthnet", "--source", str(twin)]
    )
    assert r.exit_code == 0 and "PASS" in r.output, r.output
    r = runner.invoke(app, ["publish", str(out), "--to", str(tmp_path / "pub"), "--dry-run"])
    assert r.exit_code == 0 and "would upload" in r.output and not (tmp_path / "pub").exists()
    r = runner.invoke(app, ["publish", str(out), "--to", str(tmp_path / "pub")])
    assert r.exit_code == 0 and (tmp_path / "pub" / "README.md").is_file(), r.output
    r = runner.invoke(app, ["synth", "sentinel9", str(tmp_path / "x")])
    assert r.exit_code != 0


def test_run_incremental_twice_encodes_nothing_the_second_time(tmp_path):
    """``cubecast run --incremental``: the target's index decides; a second run from a fresh
    work folder encodes 0 cubes and uploads 0 bytes."""
    base = [sys.executable, "-m", "pipeline.cli", "run", "dynamicearthnet", "--incremental",
            "--max-disk", "1GB", "--cubes", "1", "--source", str(tmp_path / "twin"),
            "--to", str(tmp_path / "pub")]  # fmt: skip
    first = subprocess.run(
        [*base, "--synthesize", "--out", str(tmp_path / "w1")], capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr[-2000:]
    assert "1 cubes encoded" in " ".join(first.stdout.split())
    second = subprocess.run([*base, "--out", str(tmp_path / "w2")], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    said = " ".join(second.stdout.split())
    assert "0 cubes encoded" in said and "0 bytes uploaded" in said, said
