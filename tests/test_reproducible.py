"""Issue 13: same input, same bytes (from separate processes); the ffmpeg binary is the
bundled one or the user's, self-tested, never PATH's; the encode cache keys on content."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.build import encode_step, fingerprint
from pipeline.recipe import load_recipe, parse_recipe
from pipeline.sources import cube_ids
from pipeline.sources.twins import write_dynamicearthnet

ROOT = Path(__file__).resolve().parents[1]

ENCODE_AND_PACK = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from pipeline import EncodeOptions
    from pipeline.codec.encode import encode_cube
    from pipeline.taco.pack import DatasetInfo, encode_sample, pack_shards
    from tests.conftest import s2_like

    out = Path(sys.argv[1])
    ds = s2_like(t=4, h=20, w=18)
    del ds.attrs["id"]  # the id then comes from the content, not a random uuid
    encode_cube(ds, EncodeOptions(crf=20)).to_folder(out / "cube")
    samples = [
        encode_sample(s2_like(t=4, h=20, w=18, seed=i), EncodeOptions(crf=20), cube_id=f"c{i}")
        for i in range(2)
    ]
    pack_shards(samples, out / "shards", DatasetInfo(id="repro", title="r"))
    """
)


def _files(root: Path) -> dict[str, bytes]:
    skip = {".cubecast.lock"}  # the pack lock holds the writer's pid; never published
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def test_two_processes_write_identical_folders_and_shards(tmp_path):
    """Was: 44 bytes of Matroska header, a random cube id and ZIP times differed."""
    for run in ("a", "b"):
        subprocess.run(
            [sys.executable, "-c", ENCODE_AND_PACK, str(tmp_path / run)],
            cwd=ROOT,
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert any(k.endswith(".tacozip") for k in a) and "cube/manifest.json" in a
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def _fake(tmp_path: Path, name: str, body: str) -> Path:
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return p


def _source(tmp_path: Path) -> Path:
    from tests.conftest import s2_like

    src = tmp_path / "cube.nc"
    ds = s2_like(t=3, h=16, w=16).drop_vars("spatial_ref")
    for v in ds.data_vars.values():
        v.attrs.pop("grid_mapping", None)
        v.encoding.pop("grid_mapping", None)
    ds.to_netcdf(src)
    return src


def _cli_encode(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "encode",
            str(_source(tmp_path)),
            str(tmp_path / "out"),
            "--engine",
            "ffmpeg",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
    )


def test_broken_ffmpeg_binary_is_refused_in_one_line(tmp_path):
    """A binary that exits 0 and writes garbage fails the self-test."""
    fake = _fake(
        tmp_path,
        "ffmpeg",
        'for a in "$@"; do case "$a" in *.mkv) echo garbage > "$a";; esac; done\n'
        "cat > /dev/null\nexit 0\n",
    )
    r = _cli_encode(tmp_path, {"CUBECAST_FFMPEG": str(fake)})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert lines[0].startswith("error:") and "self-test" in lines[0]


def test_ffmpeg_on_path_is_not_used(tmp_path):
    """An ``ffmpeg`` first on PATH (that would leave a mark) is never run."""
    marker = tmp_path / "ran"
    (tmp_path / "bin").mkdir()
    fake = _fake(tmp_path / "bin", "ffmpeg", f"touch {marker}\nexit 1\n")
    env = {k: v for k, v in os.environ.items() if k != "CUBECAST_FFMPEG"}
    env["PATH"] = f"{fake.parent}{os.pathsep}{env['PATH']}"
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "encode", str(_source(tmp_path)),
         str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert not marker.exists()


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("den")
    write_dynamicearthnet(root, cubes=1, frames=4, size=32, progress=False)
    return root


def _recipe(location: str):
    data = load_recipe("dynamicearthnet", location=location).model_dump()
    data["source"]["cubes"] = {"count": 1}
    return parse_recipe(data)


def test_encode_cache_uses_resolved_paths_and_content(twin, tmp_path, monkeypatch):
    """Was: keyed on the path as given (relative vs absolute missed) and not on content."""
    monkeypatch.chdir(twin.parent)
    rel, absolute = _recipe(twin.name), _recipe(str(twin))
    (cid,) = cube_ids(absolute)
    assert fingerprint(rel, cid) == fingerprint(absolute, cid)
    out = tmp_path / "out"
    encode_step(rel, cid, out)

    def no_load(*a, **k):
        raise AssertionError("cache missed: the cube was loaded again")

    monkeypatch.setattr("pipeline.build.load_cube", no_load)
    encode_step(absolute, cid, out)  # a hit: same files, same settings
    source = next(p for p in sorted(twin.rglob("*")) if p.is_file() and p.suffix == ".tif")
    source.write_bytes(source.read_bytes() + b"\0")
    with pytest.raises(AssertionError, match="cache missed"):
        encode_step(absolute, cid, out)
