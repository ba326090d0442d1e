"""Publishing at scale, simulated (issue 27): ``bench/publish_scale.py --simulate`` at a small
N, through the real planner, reconcile, index, catalogue and targets; and the two costs that
grew with the square of the cube count (an HTTP mirror's glob, the report's per-cube passes)."""

from __future__ import annotations

import random
import time

import pytest

from bench.publish_scale_sim import simulate_scale, table
from pipeline.publish.report import MAX_BARS, write_report
from pipeline.publish.verify import BandCheck, Verification
from pipeline.sources.mirror import HttpMirror, glob_regex

N = 500


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return simulate_scale([N], ["folder", "hub"], 100, tmp_path_factory.mktemp("sim"), log=print)


@pytest.mark.parametrize("target", ["folder", "hub"])
def test_a_run_with_no_change_plans_fast_and_uploads_nothing(simulated, target):
    row = next(r for r in simulated["rows"] if r["target"] == target)
    assert row["cubes"] == N and row["shards"] == 15  # 5 batches x 3 splits
    for name in ("nochange_fresh", "nochange_warm"):
        run = row[name]
        assert run["unchanged"] == N and run["encoded"] == 0 and run["repaired"] == []
        assert run["commits"] == 0 and run["files_written"] == 0
        assert run["uploaded_bytes"] == 0
        assert run["target_received_bytes"] == 0  # as the target itself counts it
        assert run["planned_s"] < 10, run  # 0.1-0.3 s here; it was 2 s at 500 cubes, O(N^2)


@pytest.mark.parametrize("target", ["folder", "hub"])
def test_a_run_with_one_percent_new_cubes_adds_exactly_them(simulated, target):
    row = next(r for r in simulated["rows"] if r["target"] == target)
    run, after, before = row["new1pct"], row["after"], row["before"]
    assert run["new_cubes"] == 5 and run["encoded"] == 5 and run["exactly_the_new_cubes"]
    assert run["cubes_in_index"] == N + 5 and run["unchanged"] == N
    assert run["commits"] == 1
    # one commit: the new shards (no old one rewritten), and the dataset's metadata once
    assert run["shard_bytes_written"] == after["shards"] - before["shards"] < 100_000
    assert run["index_bytes_written"] == after["index"]
    assert run["tacocat_bytes_written"] == after["tacocat"]
    record = after["records"] - before["records"]
    metadata = after["index"] + after["tacocat"] + after["card"] + after["report"] + record
    others = run["uploaded_bytes"] - run["shard_bytes_written"]
    assert after["index"] + after["tacocat"] + after["card"] < others <= metadata
    assert run["target_received_bytes"] <= 1.05 * run["uploaded_bytes"] + 50_000


def test_the_table_has_a_row_per_target(simulated):
    lines = table(simulated).splitlines()
    assert len(lines) == 4 and lines[2].startswith(f"| {N} | 15 | folder |")


def _brute_list(entries: list[str], pattern: str) -> list[str]:
    """What HttpMirror.list returned before it searched: every prefix of every entry."""
    rx = glob_regex(pattern)
    found = set()
    for rel in entries:
        parts = rel.split("/")
        found |= {"/".join(parts[:k]) for k in range(1, len(parts) + 1)}
    return sorted(p for p in found if rx.match(p))


def test_http_mirror_glob_finds_what_a_scan_finds(tmp_path):
    rng = random.Random(0)
    areas = ("1_2_13", "1_20_13", "7_7_13")
    entries = [f"planet/{a}/PF-SR/2018-01-0{d}.tif" for a in areas for d in (1, 2)]
    entries += [f"labels/{a}/Labels/Raster/{a}-2018_01_01.tif" for a in ("1_2_13", "7_7_13")]
    entries += [f"cubes/mc_{k}.zarr/{f}" for k in range(4) for f in (".zattrs", "B02/0.0.0")]
    entries += ["splits.csv", "planet.txt"]
    rng.shuffle(entries)
    m = HttpMirror("http://127.0.0.1:9", tmp_path)
    m.__dict__["entries"] = {e: ("0" * 64, None) for e in entries}  # no server needed
    patterns = [
        "planet/*/PF-SR/*.tif",
        "planet/1_2_13/PF-SR/*.tif",
        "planet/1_2*/PF-SR/*.tif",
        "labels/1_2_13/**/*.tif",
        "**/mc_*.zarr/.zattrs",
        "**/mc_1.zarr",
        "planet*",
        "planet",
        "*",
        "**",
        "cubes/mc_?.zarr",
        "nothing/*",
    ]
    for pattern in patterns:
        assert m.list(pattern) == _brute_list(entries, pattern), pattern
    assert m.under("cubes/mc_1.zarr") == ["cubes/mc_1.zarr/.zattrs", "cubes/mc_1.zarr/B02/0.0.0"]
    assert m.under("cubes/mc_1.zarr/") == m.under("cubes/mc_1.zarr")
    assert m.under("planet/1_2") == []


def test_http_mirror_lists_one_cube_of_many_without_scanning_them_all(tmp_path):
    """Planning lists each published cube: a scan of the whole index per cube took 73 s
    for 3,000 cubes (a no-change run of 40,000 would have taken hours)."""
    m = HttpMirror("http://127.0.0.1:9", tmp_path)
    days = ("2018-01-01", "2018-01-02")
    files = [f"planet/a{k:05d}/PF-SR/{d}.tif" for k in range(40_000) for d in days]
    m.__dict__["entries"] = {rel: ("0" * 64, None) for rel in files}
    m.list("planet/a00000/PF-SR/*.tif")  # builds the sorted listing once
    t = time.monotonic()
    for k in range(0, 40_000, 20):
        assert len(m.list(f"planet/a{k:05d}/PF-SR/*.tif")) == 2
        assert len(m.under(f"planet/a{k:05d}")) == 2
    assert time.monotonic() - t < 2  # 0.02 s here; a scan took 0.26 s per call (520 s)


def test_the_report_of_thousands_of_cubes_is_written_in_linear_time(tmp_path):
    """A bar per cube made a picture 2 million pixels high at 40,000 cubes, and each
    sample's row searched all checks: at 3,000 cubes the report took 57 s."""
    from PIL import Image

    n = 3000
    v = Verification()
    for k in range(n):
        sid = f"c{k:05d}"
        v.samples[sid] = {"split": "train", "bpppb": 0.5 + k % 7 / 10, "raw_bytes": 4e6,
                          "encoded_bytes": 1e6 + k}  # fmt: skip
        v.checks += [BandCheck(sid, b, "continuous", 40.0 + k % 5, 30.0, True, True) for b in "ab"]
    t = time.monotonic()
    write_report(v, tmp_path)
    assert time.monotonic() - t < 20
    with Image.open(tmp_path / "report" / "sizes.png") as img:
        assert img.height < 1000  # a histogram, not n bars
    assert n > MAX_BARS
    assert (tmp_path / "REPORT.md").read_text().count("| pass |") == n
