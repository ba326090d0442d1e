"""bench/downstream.py in its quick mode: a tiny DynamicEarthNet twin through the source
adapter, the recipe's encode and decode, a classifier on original and decoded features.
Its logic is checked here (fields, ranges, consistency), not its numbers."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

pytest.importorskip("sklearn")

import downstream  # noqa: E402


def test_quick_downstream_bench_writes_its_json(tmp_path):
    out = tmp_path / "downstream.json"
    downstream.main(["--quick", "--out", str(out), "--twin", str(tmp_path / "twin")])
    data = json.loads(out.read_text())

    assert data["settings"]["quick"] is True
    assert data["command"].endswith(
        "--quick --out " + str(out) + " --twin " + str(tmp_path / "twin")
    )
    recipe = downstream.recipe_for(tmp_path / "twin", 2)
    assert data["recipe"]["psnr"] == recipe.codec.psnr
    assert data["recipe"]["codec"] == recipe.codec.codec

    cubes = data["cubes"]
    assert len(cubes) == data["settings"]["areas"] == 2
    for c in cubes:
        assert set(c["psnr_per_band"]) == set(downstream.BANDS)
        assert all(math.isfinite(v) and v > 0 for v in c["psnr_per_band"].values())
        assert c["psnr_min"] == min(c["psnr_per_band"].values())
        assert c["bpppb"] > c["bpppb_streams"] > 0
        assert 0 < c["encoded_bytes"] < c["raw_bytes"]
        assert c["streams"] and all(s["codec"] for s in c["streams"])
        assert c["labels_exact"] is True  # the labels travel losslessly

    results = data["results"]
    assert set(results) == set(downstream.EVALS)
    pixels = {r["pixels"] for r in results.values()}
    assert len(pixels) == 1 and pixels.pop() > 0  # every evaluation scores the same pixels
    for r in results.values():
        assert 0.0 <= r["accuracy"] <= 1.0
        assert 0.0 <= r["macro_f1"] <= 1.0
    for name, diff in data["accuracy_difference_pp"].items():
        expected = 100 * (results[name]["accuracy"] - results["orig_orig"]["accuracy"])
        assert diff == pytest.approx(expected)
    acc = data["acceptance"]
    assert acc["target_pp"] == 0.1
    assert acc["met"] == all(-d <= 0.1 for d in data["accuracy_difference_pp"].values())

    assert len(data["folds"]) == 2  # leave-one-area-out
    test_areas = [f["test_area"] for f in data["folds"]]
    assert sorted(test_areas) == sorted(c["id"] for c in cubes)

    diag = data["diagnostics"]
    flips = diag["flips_right_to_wrong"] + diag["flips_wrong_to_right"]
    assert flips + diag["flips_wrong_to_wrong"] == diag["flipped_predictions"]
    assert diag["boundary"]["pixels"] + diag["interior"]["pixels"] == results["orig_orig"]["pixels"]
    assert set(diag["feature_error"]) == set(downstream.FEATURES)
