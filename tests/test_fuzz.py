"""A bounded run of bench/fuzz.py: mutated streams, manifests and shards (checksums
recomputed) must be refused in one line or decoded, never crash, hang or traceback."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import fuzz  # noqa: E402


def test_fuzzed_cubes_and_shards_never_crash_hang_or_traceback(tmp_path):
    result = fuzz.run(mutations=175, seed=13, timeout=30, work=tmp_path)
    total = result.total()
    assert sum(total.values()) == 175 + len(result.crafted)
    bad = {k: result.examples.get(k, []) for k in ("crash", "hang", "traceback", "silent_wrong")}
    assert total["crash"] == total["hang"] == total["traceback"] == total["silent_wrong"] == 0, bad
    # crafted files (huge declared sizes, bombs, sparse members) refused within 1 GiB
    assert result.crafted and result.crafted_max_rss < 1 << 30
    assert total["refused"] > 50  # the mutations do reach the decoders' checks
