"""Hostile target indexes: ``cubecast-index.json`` files mutated at random, then read the way
a publish run reads them (parse, then reconcile against a folder target).

Every case must end "ok" (a valid index: every name it holds is a plain file name) or
"refused" (one line, a :class:`CubecastError`); a traceback is a "crash", and a file
written outside the work folder or the target is "escape".

    python bench/fuzz_indexes.py --n 400 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fuzz import _paths  # noqa: E402  (the same walk over a JSON value)

from pipeline.errors import CubecastError  # noqa: E402
from pipeline.publish.index import PublishedIndex  # noqa: E402

HOSTILE = [
    "../../escape.tacozip",
    "/etc/passwd",
    "a/b.tacozip",
    ".hidden.tacozip",
    "x\x00.tacozip",
    "C:\\win.tacozip",
    "",
    1e308,
    -1,
    2**70,
    None,
    True,
    [],
    {},
    "é" * 300,
    "0" * 64,
]


def base_index() -> bytes:
    """A small valid index, with two shards and three cubes."""
    shard = {"split": "train", "size": 1000, "sha256": "a" * 64, "batch": 1}
    cube = {"source": "f" * 16, "settings": "s" * 16, "split": "train", "batch": 1}
    data = {
        "format": "cubecast-index",
        "version": 1,
        "dataset": "den",
        "batch": 2,
        "settings": {"s" * 16: {"codec": {}}},
        "shards": {
            "den_train_b00001.tacozip": {**shard, "cubes": ["c1", "c2"]},
            "den_train_b00002.tacozip": {**shard, "batch": 2, "cubes": ["c3"]},
        },
        "cubes": {
            "c1": {**cube, "shard": "den_train_b00001.tacozip"},
            "c2": {**cube, "shard": "den_train_b00001.tacozip"},
            "c3": {**cube, "batch": 2, "shard": "den_train_b00002.tacozip"},
        },
        "files": {"README.md": {"size": 10, "sha256": "b" * 64, "blob": "c" * 40}},
    }
    return json.dumps(data).encode()


def mutate(raw: bytes, rng: random.Random) -> tuple[str, bytes]:
    op = rng.choice(["value", "key", "flip", "truncate", "nest", "number", "drop"])
    if op == "flip":
        data = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return op, bytes(data)
    if op == "truncate":
        return op, raw[: rng.randrange(len(raw))]
    if op == "nest":
        depth = rng.choice([20, 200, 5000, 100000])
        return op, b'{"format":"cubecast-index","a":' + b"[" * depth + b"]" * depth + b"}"
    if op == "number":
        text = raw.decode().replace(
            '"batch": 2', f'"batch": {rng.choice(["1e400", "-1e400", "1" * 500, "NaN", "-0"])}', 1
        )
        return op, text.encode()
    data = json.loads(raw)
    paths = [p for p in _paths(data) if p]
    path = rng.choice(paths)
    parent = data
    for k in path[:-1]:
        parent = parent[k]
    if op == "drop":
        del parent[path[-1]]
    elif op == "key" and isinstance(parent, dict):
        parent[str(rng.choice(HOSTILE))] = parent.pop(path[-1])
    else:
        parent[path[-1]] = rng.choice(HOSTILE)
    return f"{op} {'/'.join(map(str, path))}", json.dumps(data).encode()


def run_case(raw: bytes, tmp: Path) -> tuple[str, str]:
    from pipeline.publish.folder_remote import FolderRemote
    from pipeline.publish.reconcile import reconcile

    target, state = tmp / "target", tmp / "work" / "state"
    target.mkdir(parents=True, exist_ok=True)
    before = {p for p in tmp.parent.rglob("*")}
    try:
        index = PublishedIndex.parse(raw, "fuzz")
        remote = FolderRemote(str(target))
        reconcile(remote, index, remote.listing(), state)
    except CubecastError as exc:
        text = str(exc)
        return ("refused", text[:120]) if "\n" not in text else ("crash", "multi-line error")
    except Exception as exc:  # noqa: BLE001 - what the bench is here to find
        return "crash", f"{type(exc).__name__}: {str(exc)[:120]}"
    new = {p for p in tmp.parent.rglob("*")} - before
    outside = [p for p in new if not (p.is_relative_to(target) or p.is_relative_to(tmp / "work"))]
    return ("escape", str(outside[:2])) if outside else ("ok", "")


def run_index_cases(seed: int, n: int) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    raw = base_index()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for k in range(n):
            what, data = mutate(raw, rng)
            case = Path(d) / f"case{k}"
            case.mkdir()
            outcome, detail = run_case(data, case / "t")
            rows.append((what, outcome, detail))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results")
    a = p.parse_args()
    t0 = time.monotonic()
    rows = run_index_cases(a.seed, a.n)
    counts = Counter(outcome for _, outcome, _ in rows)
    print("| cases | ok | refused | crash | escape | seconds |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {len(rows)} | {counts['ok']} | {counts['refused']} | {counts['crash']} | "
        f"{counts['escape']} | {time.monotonic() - t0:.1f} |"
    )
    for what, outcome, detail in rows:
        if outcome in ("crash", "escape"):
            print(f"{outcome}: {what}: {detail}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"fuzz_indexes_seed{a.seed}_n{a.n}.json").write_text(
        json.dumps({"counts": counts, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
