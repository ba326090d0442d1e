"""Fuzz the decoder: mutate encoded cubes and shards, decode each, count what happens.

Every mutation is decoded in a worker process with a time limit. Stream mutations (bit
flips, truncation, inserted bytes) get their manifest's ``nbytes``/``sha256`` recomputed,
so they reach the decoders instead of stopping at the checksum; manifest edits change one
field; shard mutations do the same inside a ``.tacozip`` (rewritten with the changed
members) or flip/cut/insert raw shard bytes. Outcomes:

- ``refused``: a CubecastError (the CLI prints one line)
- ``traceback``: any other exception (the CLI would print a traceback)
- ``crash``: the worker process died (a signal, an abort)
- ``hang``: no answer within the time limit
- ``same``: decoded, equal to the unmutated decode (the mutation did not matter)
- ``silent_wrong``: decoded without error but different from the unmutated decode

Usage: ``python bench/fuzz.py --mutations 1000 --seed 0 --out bench/results``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import random
import shutil
import sys
import tempfile
import time
import traceback
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OUTCOMES = ("refused", "traceback", "crash", "hang", "same", "silent_wrong")
KINDS = (
    "stream_bitflip",
    "stream_truncate",
    "stream_insert",
    "manifest_edit",
    "shard_member",
    "shard_manifest",
    "shard_raw",
)
MANIFEST = "manifest.json"


# ---------------------------------------------------------------------------------------
# the cubes under test
# ---------------------------------------------------------------------------------------
def base_cubes(work: Path) -> tuple[list[Path], list[Path]]:
    """Two small cubes (VVC/auto with a lossless wide band, +inf and an aux variable;
    x265 with a KLT group) as folders, and as shards (one split each: TACO wants the
    samples of one shard to have the same files)."""
    from pipeline import EncodeOptions
    from pipeline.codec.encode import encode_cube
    from pipeline.codec.options import GroupSpec
    from pipeline.taco.pack import DatasetInfo, encode_sample, pack_shards
    from tests.conftest import s2_like

    rng = np.random.default_rng(0)
    a = s2_like(t=6, h=24, w=20, seed=1)
    a.attrs["id"] = "fuzz_a"
    elev = rng.normal(0, 1e6, (6, 24, 20))
    elev[0, 0, :3] = np.inf
    a["elev"] = (("time", "y", "x"), elev)
    a["dem"] = (("y", "x"), rng.normal(100, 5, (24, 20)).astype(np.float32), {"units": "m"})
    opts_a = EncodeOptions(crf=20, groups=(GroupSpec(("elev",), lossless=True),))
    b = s2_like(t=5, h=18, w=22, seed=2)
    b.attrs["id"] = "fuzz_b"
    opts_b = EncodeOptions(crf=20, codec="libx265", decorrelate="klt")
    folders: list[Path] = []
    shards: list[Path] = []
    for ds, opts in ((a, opts_a), (b, opts_b)):
        enc = encode_cube(ds, opts)
        folders.append(enc.to_folder(work / ds.attrs["id"]))
        sample = encode_sample(ds, opts, cube_id=ds.attrs["id"])
        info = DatasetInfo(id=ds.attrs["id"], title="fuzz")
        shards += pack_shards([sample], work / f"shard_{ds.attrs['id']}", info)
    return folders, shards


# ---------------------------------------------------------------------------------------
# decoding (in the worker)
# ---------------------------------------------------------------------------------------
def digest(ds: Any) -> str:
    """A hash of everything a decode returns: values, dtypes, dims, attrs."""
    h = hashlib.sha256()
    for name in sorted(map(str, ds.variables)):
        v = ds.variables[name]
        h.update(f"{name}|{v.dtype}|{v.dims}|{v.shape}|{sorted(v.attrs.items())!r}".encode())
        vals = np.asarray(v.values)
        h.update(vals.tobytes() if vals.dtype.kind != "O" else repr(vals.tolist()).encode())
    h.update(repr(sorted(ds.attrs.items())).encode())
    return h.hexdigest()


def decode_target(kind: str, path: str) -> str:
    """Digest of every cube at ``path``: a cube folder, or every sample of a shard."""
    from pipeline.codec.decode import decode_cube
    from pipeline.codec.encoded import EncodedCube
    from pipeline.taco.read import iter_samples

    if kind == "folder":
        return digest(decode_cube(EncodedCube.from_folder(path)))
    parts = [f"{sid}:{digest(ds)}" for sid, ds in iter_samples(path)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _worker(conn: Any) -> None:
    import warnings

    warnings.simplefilter("ignore")
    from pipeline.errors import CubecastError

    while True:
        task = conn.recv()
        if task is None:
            return
        try:
            conn.send(("ok", decode_target(*task)))
        except CubecastError as exc:
            conn.send(("refused", f"{type(exc).__name__}: {exc}"))
        except BaseException as exc:  # noqa: BLE001  (what we are counting)
            tb = traceback.format_exc(limit=-3)
            conn.send(("traceback", f"{type(exc).__name__}: {exc}\n{tb}"))


class Decoder:
    """A worker process that decodes with a time limit, restarted after a hang or crash."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._ctx = mp.get_context("spawn")
        self._start()

    def _start(self) -> None:
        self._conn, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_worker, args=(child,), daemon=True)
        self._proc.start()

    def _restart(self) -> None:
        self._proc.kill()
        self._proc.join()
        self._start()

    def decode(self, kind: str, path: Path) -> tuple[str, str]:
        self._conn.send((kind, str(path)))
        # the first call also pays for the imports
        if not self._conn.poll(self.timeout):
            self._restart()
            return "hang", f"no answer in {self.timeout:g} s"
        try:
            return self._conn.recv()
        except EOFError:
            code = self._proc.exitcode
            self._restart()
            return "crash", f"worker died (exit code {code})"

    def close(self) -> None:
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()


# ---------------------------------------------------------------------------------------
# mutations
# ---------------------------------------------------------------------------------------
def mutate_bytes(data: bytes, op: str, rng: random.Random) -> bytes:
    if not data:
        return bytes([rng.randrange(256)])
    b = bytearray(data)
    if op == "bitflip":
        for _ in range(rng.choice((1, 1, 2, 4, 16))):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if op == "truncate":
        return bytes(b[: rng.randrange(len(b))])
    i = rng.randrange(len(b) + 1)
    n = rng.choice((1, 1, 3, 16, 200))
    return bytes(b[:i]) + rng.randbytes(n) + bytes(b[i:])


def load_manifest(raw: bytes) -> dict[str, Any]:
    import zstandard

    if raw[:4] == b"\x28\xb5\x2f\xfd":
        raw = zstandard.ZstdDecompressor().decompress(raw)
    return json.loads(raw)


def dump_manifest(m: dict[str, Any]) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=3).compress(json.dumps(m).encode())


def recompute(m: dict[str, Any], file: str, data: bytes) -> None:
    """Make the manifest agree with a changed file, so the checksum does not stop it."""
    digest_ = hashlib.sha256(data).hexdigest()
    for s in m.get("streams", []):
        if s.get("file") == file:
            s["nbytes"], s["sha256"] = len(data), digest_
    aux = m.get("aux")
    if aux and aux.get("file") == file:
        aux["nbytes"], aux["sha256"] = len(data), digest_


ODD_VALUES: list[Any] = [
    0, -1, 1, 2, 7, 65535, 2**31, 2**63, -(2**63), 10**30, 1.5, -1e308, 1e308, float("nan"),
    "", "x", "../../etc/passwd", "ffv1", "libx265", "gray16le", "yuv420p10le", "uint64",
    "float16", "datetime64[ns]", "object", None, True, False, [], [0], [[0, 1]], [[0, 10**9]],
    {}, {"__np__": [1], "dtype": "int8", "shape": [1]},
    {"__range__": [0, 1, 10**12], "dtype": "int64"},
    {"__zstd__": "AAAA", "dtype": "float32", "shape": [3]},
    {"__list__": [{"__list__": []}]},
]  # fmt: skip


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def edit_manifest(m: dict[str, Any], rng: random.Random) -> str:
    """Change, delete or duplicate one field; returns what it did."""
    paths = [p for p in _paths(m) if p and p[-1] not in ("format",)]
    path = rng.choice(paths)
    parent = m
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    op = rng.random()
    if op < 0.1 and isinstance(parent, dict):
        del parent[key]
        return f"del {path}"
    if op < 0.2 and isinstance(parent, list):
        parent.append(parent[key])
        return f"dup {path}"
    if op < 0.35:  # a value of the right type but another place's: names, numbers
        same = [p for p in paths if type(_get(m, p)) is type(parent[key]) and p != path]
        if same:
            other = rng.choice(same)
            parent[key] = json.loads(json.dumps(_get(m, other)))
            return f"{path} = value of {other}"
    value = rng.choice(ODD_VALUES)
    if isinstance(parent[key], int | float) and not isinstance(parent[key], bool):
        if rng.random() < 0.5:
            value = parent[key] + rng.choice((-1, 1, -2, 3, 1000))
    parent[key] = value
    return f"{path} = {value!r}"[:200]


def _get(m: Any, path: tuple) -> Any:
    for k in path:
        m = m[k]
    return m


@dataclass
class Case:
    kind: str
    what: str
    target: str  # "folder" or "shard"
    path: Path


def mutate_folder(src: Path, dst: Path, kind: str, rng: random.Random) -> Case:
    shutil.copytree(src, dst)
    m = load_manifest((dst / MANIFEST).read_bytes())
    if kind == "manifest_edit":
        what = edit_manifest(m, rng)
    else:
        files = sorted(p.name for p in dst.iterdir() if p.name != MANIFEST)
        name = rng.choice(files)
        op = kind.removeprefix("stream_")
        data = mutate_bytes((dst / name).read_bytes(), op, rng)
        (dst / name).write_bytes(data)
        recompute(m, name, data)
        what = f"{op} {name}"
    (dst / MANIFEST).write_bytes(dump_manifest(m))
    return Case(kind, what, "folder", dst)


def mutate_shard(src: Path, dst: Path, kind: str, rng: random.Random) -> Case:
    if kind == "shard_raw":
        op = rng.choice(("bitflip", "truncate", "insert"))
        dst.write_bytes(mutate_bytes(src.read_bytes(), op, rng))
        return Case(kind, f"raw {op}", "shard", dst)
    with zipfile.ZipFile(src) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    samples = sorted({n.split("/")[1] for n in members if n.startswith("DATA/")})
    sid = rng.choice(samples)
    prefix = f"DATA/{sid}/"
    mkey = prefix + "manifest_json"
    m = load_manifest(members[mkey])
    if kind == "shard_manifest":
        what = edit_manifest(m, rng)
    else:
        children = sorted(n for n in members if n.startswith(prefix) and n != mkey)
        child = rng.choice(children)
        op = rng.choice(("bitflip", "truncate", "insert"))
        data = mutate_bytes(members[child], op, rng)
        members[child] = data
        file = next(
            (
                s["file"]
                for s in m.get("streams", [])
                if prefix + s["file"].replace(".", "_") == child
            ),
            None,
        )
        if file is None and m.get("aux"):
            file = m["aux"]["file"]
        if file:
            recompute(m, file, data)
        what = f"{op} {child}"
    members[mkey] = dump_manifest(m)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return Case(kind, what, "shard", dst)


# ---------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------
@dataclass
class Result:
    counts: dict[str, Counter] = field(default_factory=dict)
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, case: Case, outcome: str, detail: str) -> None:
        self.counts.setdefault(case.kind, Counter())[outcome] += 1
        ex = self.examples.setdefault(outcome, [])
        if outcome not in ("same", "refused") and len(ex) < 50:
            ex.append({"kind": case.kind, "mutation": case.what, "detail": detail[-1500:]})

    def total(self) -> Counter:
        out: Counter = Counter()
        for c in self.counts.values():
            out.update(c)
        return out


def run(
    mutations: int,
    seed: int,
    timeout: float = 30.0,
    work: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> Result:
    """Fuzz ``mutations`` mutated cubes/shards; the same seed gives the same mutations."""
    rng = random.Random(seed)
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="cubecast-fuzz-")) if work is None else work
    result = Result()
    start = time.perf_counter()
    decoder = Decoder(timeout)
    try:
        folders, shards = base_cubes(work / "base")
        baseline = {}
        for target, paths in (("folder", folders), ("shard", shards)):
            for p in paths:
                status, out = decoder.decode(target, p)
                if status != "ok":
                    raise RuntimeError(f"unmutated {p} does not decode: {out}")
                baseline[str(p)] = out
        for i in range(mutations):
            kind = KINDS[i % len(KINDS)] if i < len(KINDS) else rng.choice(KINDS)
            dst = work / f"m{i}"
            if kind.startswith("shard"):
                src = rng.choice(shards)
                case = mutate_shard(src, dst.with_suffix(".tacozip"), kind, rng)
            else:
                src = rng.choice(folders)
                case = mutate_folder(src, dst, kind, rng)
            status, out = decoder.decode(case.target, case.path)
            if status == "ok":
                status = "same" if out == baseline[str(src)] else "silent_wrong"
            result.add(case, status, out)
            if case.path.is_dir():
                shutil.rmtree(case.path)
            else:
                case.path.unlink(missing_ok=True)
            if log and (i + 1) % 100 == 0:
                log(f"{i + 1}/{mutations} {dict(result.total())}")
    finally:
        decoder.close()
        if own:
            shutil.rmtree(work, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    return result


def table(result: Result) -> str:
    cols = OUTCOMES
    lines = [f"{'mutation':16}" + "".join(f"{c:>14}" for c in cols) + f"{'total':>8}"]
    for kind in KINDS:
        c = result.counts.get(kind, Counter())
        lines.append(f"{kind:16}" + "".join(f"{c[o]:>14}" for o in cols) + f"{sum(c.values()):>8}")
    t = result.total()
    lines.append(f"{'all':16}" + "".join(f"{t[o]:>14}" for o in cols) + f"{sum(t.values()):>8}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutations", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per decode")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    result = run(args.mutations, args.seed, args.timeout, log=lambda s: print(s, flush=True))
    print(table(result))
    t = result.total()
    print(
        f"{sum(t.values())} mutations in {result.seconds:.0f} s: {t['crash']} crashes, "
        f"{t['hang']} hangs, {t['traceback']} tracebacks, {t['silent_wrong']} silent-wrong"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"fuzz_seed{args.seed}_n{args.mutations}.json"
    path.write_text(
        json.dumps(
            {
                "command": " ".join(["python", "bench/fuzz.py", *sys.argv[1:]]),
                "mutations": args.mutations,
                "seed": args.seed,
                "seconds": round(result.seconds, 1),
                "totals": dict(t),
                "by_kind": {k: dict(v) for k, v in result.counts.items()},
                "examples": result.examples,
            },
            indent=1,
        )
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
