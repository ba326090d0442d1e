"""A new user's first run: the demo from an empty PREFECT_HOME outside the repository,
recipes found from any directory, and the reader working without the publish extra."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUBECAST_RECIPES = "CUBECAST_RECIPES"
# what `pip install cubecast` (no extras) must not need to decode a sample
PUBLISH_ONLY = (
    "prefect",
    "prefect_dask",
    "dask",
    "distributed",
    "rasterio",
    "rioxarray",
    "pyproj",
    "matplotlib",
    "huggingface_hub",
    "tacotoolbox",
    "skimage",
    "zarr",
    "ffmpeg",
    "imageio_ffmpeg",
    "fastapi",
    "sqlalchemy",
    "yaml",
)


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    for key in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", CUBECAST_RECIPES):
        env.pop(key, None)
    return env


@pytest.mark.slow
def test_demo_runs_cold_outside_the_repo(tmp_path):
    """The README's first command, from an empty PREFECT_HOME in a folder outside the repo:
    one temporary Prefect server for the whole run (worker processes use it too)."""
    work = tmp_path / "user"
    work.mkdir()
    assert not (tmp_path / "prefect-home").exists()
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "demo"],
        cwd=work,
        env=_clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=540,
    )
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    # one server: ours, announced once; no worker or background thread started another
    assert log.count("Prefect API: http://127.0.0.1:") == 1, log[-3000:]
    assert "Starting temporary server" not in log, log[-3000:]
    assert "{'shards'" not in r.stdout  # a summary, not a raw dict
    assert "PASS" in r.stdout and "min PSNR dB" in r.stdout and "published:" in r.stdout
    published = work / "out" / "published" / "dynamicearthnet"
    assert (published / ".tacocat").is_dir() and (published / "report" / "sample.png").is_file()
    assert (published / "README.md").is_file() and list(published.glob("*.tacozip"))
    assert (published / "cubecast-index.json").is_file()  # the demo publishes incrementally
    assert (tmp_path / "prefect-home").is_dir()  # the run's database went there, not ~/.prefect


def test_recipes_are_found_from_any_directory(tmp_path, monkeypatch):
    from pipeline.errors import RecipeError
    from pipeline.recipe import available_recipes, load_recipe

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CUBECAST_RECIPES, raising=False)
    assert {"dynamicearthnet", "deepextremecubes"} <= set(available_recipes())
    assert load_recipe("dynamicearthnet").taco.id == "dynamicearthnet-cubecast"

    with pytest.raises(RecipeError) as err:
        load_recipe("sentinel9")
    msg = str(err.value)
    assert "\n" not in msg and "looked in" in msg and str(tmp_path / "datasets") in msg
    assert "CUBECAST_RECIPES" in msg

    # a user's own folder is honoured, and wins over the packaged recipe of the same name
    mine = tmp_path / "mine"
    mine.mkdir()
    text = (ROOT / "datasets" / "dynamicearthnet.toml").read_text()
    (mine / "dynamicearthnet.toml").write_text(text.replace('version = "1.0.0"', 'version = "9"'))
    (mine / "other.toml").write_text(text)
    monkeypatch.setenv(CUBECAST_RECIPES, str(mine))
    assert load_recipe("dynamicearthnet").taco.version == "9"
    assert load_recipe("other").path == str(mine / "other.toml")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    src = tmp_path_factory.mktemp("src")  # setuptools writes build/ beside the sources
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("cubecast", "pipeline", "flows", "datasets"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot build a wheel here (no build backend reachable): {r.stderr[-300:]}")
    return next(out.glob("cubecast-*.whl"))


def test_wheel_ships_the_recipes_and_a_light_core(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for toml in (ROOT / "datasets").glob("*.toml"):
            assert z.read(f"pipeline/recipes/{toml.name}") == toml.read_bytes()
        for py in [
            *ROOT.glob("pipeline/**/*.py"),
            *ROOT.glob("flows/*.py"),
            *ROOT.glob("cubecast/*.py"),
        ]:
            assert py.relative_to(ROOT).as_posix() in names
        scripts = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt")))
        assert b"cubecast = cubecast.__main__:main" in scripts
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    core = [
        line.split(":", 1)[1].strip()
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    core_names = {c.split(";")[0].split("<")[0].split(">")[0].split("=")[0].strip() for c in core}
    assert {"av", "numpy", "xarray", "zstandard", "tacoreader"} <= core_names
    heavy = {"prefect", "dask", "rasterio", "rioxarray", "matplotlib", "huggingface_hub"}
    assert not core_names & heavy, core_names & heavy
    assert 'extra == "publish"' in meta


def test_dev_extra_includes_publish():
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any("publish" in d for d in spec["optional-dependencies"]["dev"])
    assert '-e ".[dev]"' in (ROOT / ".ci" / "run").read_text()


def test_reader_decodes_without_the_publish_extra(tmp_path):
    """Pack a sample here, then decode it in a process where every publish-only package
    fails to import: what `pip install cubecast` gives a downstream user."""
    from pipeline import EncodeOptions
    from pipeline.taco.pack import DatasetInfo, encode_sample, pack_shards
    from tests.conftest import s2_like

    ds = s2_like(t=6, h=16, w=16)
    pack_shards([encode_sample(ds, EncodeOptions(crf=10))], tmp_path, DatasetInfo(id="light"))
    script = textwrap.dedent(
        f"""
        import sys
        for name in {PUBLISH_ONLY!r}:
            sys.modules[name] = None  # as if not installed: import fails, find_spec is None
        import tacoreader
        from pipeline import decode_cube, open_sample

        ds = tacoreader.load({str(tmp_path / ".tacocat")!r})
        cube = open_sample(ds, 0)
        assert set(cube.data_vars) >= {{"B02", "SCL"}}, cube
        print("decoded", dict(cube.sizes))
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "decoded" in r.stdout


def test_cli_names_the_extra_when_it_is_missing(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        for name in ("prefect", "tacotoolbox", "rioxarray"):
            sys.modules[name] = None  # as if not installed
        sys.argv = ["cubecast", "demo"]
        from pipeline.cli import main
        main()
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "cubecast[publish]" in r.stderr and "Traceback" not in r.stderr
