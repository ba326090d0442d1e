"""Fuzz the decoder: mutate encoded cubes and shards, decode each, count what happens.

Every mutation is decoded in a worker process with a time limit. Stream mutations (bit
flips, truncation, inserted bytes) get their manifest's ``nbytes``/``sha256`` recomputed,
so they reach the decoders instead of stopping at the checksum; manifest edits change one
field; shard mutations do the same inside a ``.tacozip`` (rewritten with the changed
members) or flip/cut/insert raw shard bytes. Those are *re-signed*: the fuzzer rewrote
the checksums, as a crafter would, so a changed decode is expected of them. Manifest bit
flips (``manifest_bitflip`` in a folder, ``shard_manifest_bitflip`` in a shard, the ZIP's
CRC recomputed but not the row's SHA-256) and raw shard mutations are not re-signed: a
changed decode of those is silent corruption. ``crafted`` runs a fixed list of crafted
files (huge declared sizes, zstd bombs in a mask and in a class layer's chunk, sparse and
oversized tar members, streams whose frames are not the manifest's; as shards, folders
and tars, and ``cubecast info`` on the tar), each of which must be refused; the worker's
peak RSS is measured for every decode (its high-water mark reset before each). Outcomes:

- ``refused``: a CubecastError (the CLI prints one line)
- ``traceback``: any other exception (the CLI would print a traceback)
- ``crash``: the worker process died (a signal, an abort)
- ``hang``: no answer within the time limit
- ``same``: decoded, equal to the unmutated decode (the mutation did not matter)
- ``changed``: a re-signed mutation decoded differently (undetectable by design)
- ``silent_wrong``: a mutation that was not re-signed (or a crafted file) decoded
  without error but differently from the unmutated decode

The worker decodes under ``CUBECAST_DECODE_BUDGET`` = ``--budget`` (512M by default: the
fuzzed cubes need about 1 MB); a crafted decode peaking over ``--max-rss`` (1 GiB) is
reported. Usage: ``python bench/fuzz.py --mutations 1000 --seed 0 --out bench/results``
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing as mp
import os
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

OUTCOMES = ("refused", "traceback", "crash", "hang", "same", "changed", "silent_wrong")
KINDS = (
    "stream_bitflip",
    "stream_truncate",
    "stream_insert",
    "manifest_edit",
    "manifest_bitflip",
    "shard_member",
    "shard_manifest",
    "shard_manifest_bitflip",
    "shard_raw",
)
RESIGNED = {"stream_bitflip", "stream_truncate", "stream_insert", "manifest_edit"}
RESIGNED |= {"shard_member", "shard_manifest"}
MANIFEST = "manifest.json"
ROWS = "METADATA/level0.parquet"
MiB = 1 << 20


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
    if kind == "tar":
        return digest(decode_cube(EncodedCube.open(path)))
    if kind == "tar_info":  # what `cubecast info` reads: the manifest and sizes
        enc = EncodedCube.open(path)
        return f"{enc!r}"
    parts = [f"{sid}:{digest(ds)}" for sid, ds in iter_samples(path)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _reset_peak_rss() -> None:
    """Linux: reset the process's RSS high-water mark, so ru_maxrss is this decode's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then ru_maxrss is the worker's high-water mark: an upper bound


def _peak_rss() -> int:
    """This decode's peak RSS: ``VmHWM``, which ``clear_refs`` resets (``ru_maxrss`` is
    not reset, and a forked worker inherits its parent's: a pytest process of 1 GiB)."""
    import resource

    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _worker(conn: Any, budget: str) -> None:
    import warnings

    warnings.simplefilter("ignore")
    os.environ["CUBECAST_DECODE_BUDGET"] = budget
    # the imports a decode needs, before the first case's clock starts
    import pipeline.codec.decode  # noqa: F401
    import pipeline.taco.read  # noqa: F401
    from pipeline.errors import CubecastError

    conn.send("ready")
    while True:
        task = conn.recv()
        if task is None:
            return
        _reset_peak_rss()
        try:
            got = ("ok", decode_target(*task))
        except CubecastError as exc:
            got = ("refused", f"{type(exc).__name__}: {exc}")
        except BaseException as exc:  # noqa: BLE001  (what we are counting)
            tb = traceback.format_exc(limit=-3)
            got = ("traceback", f"{type(exc).__name__}: {exc}\n{tb}")
        conn.send((*got, _peak_rss()))


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, all threads) process ``pid`` has used; None off Linux."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Decoder:
    """A worker process that decodes with a time limit, restarted after a hang or crash.

    A decode hangs when it has used ``timeout`` seconds of CPU (a loop), or
    ``WALL_SLACK`` x ``timeout`` seconds of wall time (a deadlock): on a loaded machine a
    decode's wall time stretches, its CPU time does not. The worker's imports are done
    before its first decode's clock starts (``STARTUP`` seconds at most)."""

    WALL_SLACK = 4
    STARTUP = 300.0

    def __init__(self, timeout: float, budget: str = "512M") -> None:
        self.timeout = timeout
        self.budget = budget
        self.last_rss = 0
        self._ctx = mp.get_context("spawn")
        self._start()

    def _start(self) -> None:
        self._conn, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_worker, args=(child, self.budget), daemon=True)
        self._proc.start()
        try:
            ready = self._conn.poll(self.STARTUP) and self._conn.recv() == "ready"
        except EOFError:
            ready = False
        if not ready:
            self._proc.kill()
            raise RuntimeError(f"the decode worker did not start in {self.STARTUP:g} s")

    def _restart(self) -> None:
        self._proc.kill()
        self._proc.join()
        self._start()

    def _wait(self) -> str | None:
        """None once the worker has answered (or died); why it hangs otherwise."""
        cpu0 = _cpu_seconds(self._proc.pid)
        start = time.monotonic()
        while not self._conn.poll(min(1.0, self.timeout)):
            wall = time.monotonic() - start
            cpu = _cpu_seconds(self._proc.pid)
            used = wall if cpu is None or cpu0 is None else cpu - cpu0
            if used >= self.timeout:
                return f"no answer after {used:.0f} s of CPU ({wall:.0f} s)"
            if wall >= self.WALL_SLACK * self.timeout:
                return f"no answer in {wall:.0f} s ({used:.0f} s of CPU)"
        return None

    def decode(self, kind: str, path: Path) -> tuple[str, str]:
        self._conn.send((kind, str(path)))
        self.last_rss = 0
        hang = self._wait()
        if hang is not None:
            self._restart()
            return "hang", hang
        try:
            status, out, self.last_rss = self._conn.recv()
            return status, out
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


def flip_bit(data: bytes, rng: random.Random) -> tuple[bytes, int]:
    b = bytearray(data)
    bit = rng.randrange(len(b) * 8)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b), bit


def mutate_folder(src: Path, dst: Path, kind: str, rng: random.Random) -> Case:
    shutil.copytree(src, dst)
    if kind == "manifest_bitflip":  # not re-signed: a flipped bit on disk
        data, bit = flip_bit((dst / MANIFEST).read_bytes(), rng)
        (dst / MANIFEST).write_bytes(data)
        return Case(kind, f"bit {bit} of {MANIFEST}", "folder", dst)
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


def set_row_digest(members: dict[str, bytes], sid: str) -> None:
    """Re-sign a sample's row: its ``manifest_sha256`` made to agree with its manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if ROWS not in members:
        return
    table = pq.read_table(io.BytesIO(members[ROWS]))
    if "manifest_sha256" not in table.column_names:
        return
    sha = hashlib.sha256(members[f"DATA/{sid}/manifest_json"]).hexdigest()
    col = table.column("manifest_sha256").to_pylist()
    ids = table.column("id").to_pylist()
    col = [sha if i == sid else c for i, c in zip(ids, col, strict=True)]
    idx = table.column_names.index("manifest_sha256")
    table = table.set_column(idx, "manifest_sha256", pa.array(col, pa.string()))
    out = io.BytesIO()
    pq.write_table(table, out)
    members[ROWS] = out.getvalue()


def write_zip(dst: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def read_zip(src: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(src) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def mutate_shard(src: Path, dst: Path, kind: str, rng: random.Random) -> Case:
    if kind == "shard_raw":
        op = rng.choice(("bitflip", "truncate", "insert"))
        dst.write_bytes(mutate_bytes(src.read_bytes(), op, rng))
        return Case(kind, f"raw {op}", "shard", dst)
    members = read_zip(src)
    samples = sorted({n.split("/")[1] for n in members if n.startswith("DATA/")})
    sid = rng.choice(samples)
    prefix = f"DATA/{sid}/"
    mkey = prefix + "manifest_json"
    if kind == "shard_manifest_bitflip":  # CRC right (flipped before zipping), row not
        members[mkey], bit = flip_bit(members[mkey], rng)
        write_zip(dst, members)
        return Case(kind, f"bit {bit} of {mkey}", "shard", dst)
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
    set_row_digest(members, sid)
    write_zip(dst, members)
    return Case(kind, what, "shard", dst)


# ---------------------------------------------------------------------------------------
# crafted files: small files declaring huge allocations (each must be refused)
# ---------------------------------------------------------------------------------------
def zstd_bomb(n: int) -> bytes:
    """A zstd frame of ``n`` zero bytes with its content size declared, made 16 MiB at a
    time (2.2 GB become about 70 kB)."""
    import zstandard

    cobj = zstandard.ZstdCompressor(level=3).compressobj(size=n)
    block = bytes(16 * MiB)
    parts = [cobj.compress(block[: min(len(block), n - i)]) for i in range(0, n, len(block))]
    return b"".join(parts) + cobj.flush()


def video(h: int, w: int, frames: int, pix_fmt: str) -> bytes:
    """An FFV1 stream of zero frames (cheap at any size)."""
    from pipeline.codec.pyav_engine import PyAVWriter
    from pipeline.codec.settings import VideoSettings, n_planes, sample_dtype

    buf = io.BytesIO()
    w_ = PyAVWriter(buf, h, w, VideoSettings(codec="ffv1", pix_fmt=pix_fmt, lossless=True))
    for _ in range(frames):
        w_.write(np.zeros((n_planes(pix_fmt), h, w), sample_dtype(pix_fmt)))
    w_.close()
    return buf.getvalue()


def sparse_member(name: str, size: int) -> tuple[Any, bytes]:
    """A PAX (GNU 0.1) sparse tar member: no data, one hole of ``size`` bytes."""
    import tarfile

    info = tarfile.TarInfo(name)
    info.pax_headers = {
        "GNU.sparse.map": f"{size},0",
        "GNU.sparse.size": str(size),
        "GNU.sparse.name": name,
    }
    return info, b""


def write_tar(dst: Path, files: dict[str, bytes], extra: list[tuple[Any, bytes]]) -> Path:
    import tarfile

    with tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data))
    return dst


def _sizes(**kw: int) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        for dim, n in kw.items():
            m["sizes"][m[f"{dim}_dim"]] = n

    return edit


def _nothing_stored(m: dict[str, Any]) -> None:
    m["sizes"][m["y_dim"]] = m["sizes"][m["x_dim"]] = 4096
    for s in m["streams"]:
        if s["kind"] != "mask":
            s["frames"] = []


def _ranges(m: dict[str, Any]) -> None:
    for i in range(8):
        m["attrs"][f"crafted{i}"] = {"__range__": [0, 1, 1 << 25], "dtype": "int64"}


MANIFEST_EDITS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("3 x 32768 x 32768 frames", _sizes(y=32768, x=32768)),
    ("64 x 32768 x 32768 frames", _sizes(time=64, y=32768, x=32768)),
    ("a million frames", _sizes(time=1 << 20)),
    ("4096 px, no frame stored", _nothing_stored),
    ("8 x 256 MiB ranges in attrs", _ranges),
]


def crafted_cases(folder: Path, shard: Path, work: Path) -> list[tuple[Case, str]]:
    """Crafted files made from one cube (as a shard, a folder and a tar), each with the
    baseline key its decode is compared with."""
    cases: list[tuple[Case, str]] = []
    members = read_zip(shard)
    sid = sorted({n.split("/")[1] for n in members if n.startswith("DATA/")})[0]
    prefix, mkey = f"DATA/{sid}/", f"DATA/{sid}/manifest_json"
    m0 = load_manifest(members[mkey])
    video_stream = next(s for s in m0["streams"] if s["kind"] != "mask")
    mask = next((s for s in m0["streams"] if s["kind"] == "mask"), None)
    klass = next((s for s in m0["streams"] if s["codec"] == "zstd-codes"), None)
    h, w = m0["sizes"][m0["y_dim"]], m0["sizes"][m0["x_dim"]]
    n = m0["sizes"][m0["time_dim"]]

    def shard_case(
        what: str, edit: Callable[[dict[str, Any]], None] | None, files: dict[str, bytes]
    ) -> None:
        got, m = dict(members), json.loads(json.dumps(m0))
        for file, data in files.items():
            got[prefix + file.replace(".", "_")] = data
            recompute(m, file, data)
        if edit:
            edit(m)
        got[mkey] = dump_manifest(m)
        set_row_digest(got, sid)
        dst = work / f"crafted{len(cases)}.tacozip"
        write_zip(dst, got)
        cases.append((Case("crafted", f"shard: {what}", "shard", dst), str(shard)))

    for what, edit in MANIFEST_EDITS:
        shard_case(what, edit, {})
    if mask is not None:
        shard_case("zstd mask bomb (2.2 GB)", None, {mask["file"]: zstd_bomb(2_200_000_000)})
    if klass is not None:  # a chunk with no palette (2 zero bytes), then the bomb
        bomb = b"\0\0" + zstd_bomb(2_200_000_000)
        shard_case("zstd class chunk bomb (2.2 GB)", None, {klass["file"]: bomb})
    pix = "gray16le" if video_stream["pix_fmt"] not in ("gray", "gray16le") else "gbrp16le"
    larger = {
        "frames 2x larger": video(
            2 * h,
            2 * w,
            n,
            video_stream["pix_fmt"]
            if video_stream["pix_fmt"] in ("gray", "gray16le", "gbrp")
            else "gray16le",
        ),
        "8192 x 8192 frames (about 1 GB)": video(8192, 8192, 1, "gray16le"),
        "another pixel format": video(h, w, n, pix),
    }
    for what, data in larger.items():
        shard_case(f"{video_stream['file']}: {what}", None, {video_stream["file"]: data})

    # a folder: the same manifest edit and bomb
    for what, edit, files in (
        ("3 x 32768 x 32768 frames", _sizes(y=32768, x=32768), {}),
        ("zstd mask bomb (2.2 GB)", None, {mask["file"]: zstd_bomb(2_200_000_000)} if mask else {}),
    ):
        dst = work / f"crafted{len(cases)}"
        shutil.copytree(folder, dst)
        m = load_manifest((dst / MANIFEST).read_bytes())
        for file, data in files.items():
            (dst / file).write_bytes(data)
            recompute(m, file, data)
        if edit:
            edit(m)
        (dst / MANIFEST).write_bytes(dump_manifest(m))
        cases.append((Case("crafted", f"folder: {what}", "folder", dst), str(folder)))

    # tars: a sparse member that no one names, a sparse stream, an oversized member
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != MANIFEST}
    files = {MANIFEST: (folder / MANIFEST).read_bytes(), **files}
    junk = sparse_member("junk", 6_400_000_000)
    some = next(iter(n for n in files if n != MANIFEST))
    stream_sparse = sparse_member(some, 6_400_000_000)
    over_info, over = _oversized(some, 64 * MiB)
    for what, kind, keep, extra in (
        ("sparse 6.4 GB member (cubecast info)", "tar_info", files, [junk]),
        ("sparse 6.4 GB member (decode)", "tar", files, [junk]),
        (f"{some} as a sparse 6.4 GB member", "tar", _without(files, some), [stream_sparse]),
        (f"{some} claims 64 MiB", "tar", _without(files, some), [(over_info, over)]),
    ):
        dst = write_tar(work / f"crafted{len(cases)}.tar", keep, extra)
        cases.append((Case("crafted", f"tar: {what}", kind, dst), f"{kind}:{folder}"))
    return cases


def _without(files: dict[str, bytes], name: str) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k != name}


def _oversized(name: str, size: int) -> tuple[Any, bytes]:
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = size
    return info, bytes(size)


# ---------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------
@dataclass
class Result:
    counts: dict[str, Counter] = field(default_factory=dict)
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    crafted: list[dict[str, Any]] = field(default_factory=list)
    max_rss: int = 0  # bytes, the largest peak of any single decode
    seconds: float = 0.0

    def add(self, case: Case, outcome: str, detail: str, rss: int = 0) -> None:
        self.counts.setdefault(case.kind, Counter())[outcome] += 1
        self.max_rss = max(self.max_rss, rss)
        ex = self.examples.setdefault(outcome, [])
        if outcome not in ("same", "refused", "changed") and len(ex) < 50:
            ex.append({"kind": case.kind, "mutation": case.what, "detail": detail[-1500:]})
        if case.kind == "crafted":
            self.crafted.append(
                {
                    "case": case.what,
                    "outcome": outcome,
                    "peak_rss_mib": round(rss / MiB, 1),
                    "detail": detail.splitlines()[0][:300] if detail else "",
                }
            )

    def total(self) -> Counter:
        out: Counter = Counter()
        for c in self.counts.values():
            out.update(c)
        return out

    @property
    def crafted_max_rss(self) -> int:
        return int(max((c["peak_rss_mib"] for c in self.crafted), default=0) * MiB)


def classify(kind: str, status: str, out: str, baseline: str) -> str:
    if status != "ok":
        return status
    if out == baseline:
        return "same"
    return "changed" if kind in RESIGNED else "silent_wrong"


def run(
    mutations: int,
    seed: int,
    timeout: float = 30.0,
    work: Path | None = None,
    log: Callable[[str], None] | None = None,
    budget: str = "512M",
    crafted: bool = True,
) -> Result:
    """Fuzz ``mutations`` mutated cubes/shards (and, with ``crafted``, the crafted files);
    the same seed gives the same mutations."""
    rng = random.Random(seed)
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="cubecast-fuzz-")) if work is None else work
    result = Result()
    start = time.perf_counter()
    decoder = Decoder(timeout, budget)
    try:
        folders, shards = base_cubes(work / "base")
        baseline = {}
        tar = work / "base" / "a.tar"
        write_tar(
            tar,
            {MANIFEST: (folders[0] / MANIFEST).read_bytes()}
            | {p.name: p.read_bytes() for p in sorted(folders[0].iterdir()) if p.name != MANIFEST},
            [],
        )
        for target, paths in (
            ("folder", folders),
            ("shard", shards),
            ("tar", [tar]),
            ("tar_info", [tar]),
        ):
            for p in paths:
                status, out = decoder.decode(target, p)
                if status != "ok":
                    raise RuntimeError(f"unmutated {p} does not decode: {out}")
                baseline[str(p) if target in ("folder", "shard") else f"{target}:{folders[0]}"] = (
                    out
                )
        if crafted:
            for case, key in crafted_cases(folders[0], shards[0], work):
                status, out = decoder.decode(case.target, case.path)
                outcome = classify("crafted", status, out, baseline[key])
                result.add(case, outcome, out, decoder.last_rss)
                if case.path.is_dir():
                    shutil.rmtree(case.path)
                else:
                    case.path.unlink(missing_ok=True)
            if log:
                log(f"crafted: {dict(result.counts.get('crafted', {}))}")
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
            result.add(case, classify(kind, status, out, baseline[str(src)]), out, decoder.last_rss)
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
    w = max(len(k) for k in (*KINDS, "crafted")) + 2
    lines = [f"{'mutation':{w}}" + "".join(f"{c:>13}" for c in cols) + f"{'total':>8}"]
    for kind in (*KINDS, "crafted"):
        c = result.counts.get(kind, Counter())
        lines.append(f"{kind:{w}}" + "".join(f"{c[o]:>13}" for o in cols) + f"{sum(c.values()):>8}")
    t = result.total()
    lines.append(f"{'all':{w}}" + "".join(f"{t[o]:>13}" for o in cols) + f"{sum(t.values()):>8}")
    if result.crafted:
        lines += ["", f"{'crafted file':58}{'outcome':>14}{'peak RSS MiB':>14}"]
        for c in result.crafted:
            lines.append(f"{c['case'][:58]:58}{c['outcome']:>14}{c['peak_rss_mib']:>14.0f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutations", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--timeout", type=float, default=30.0, help="CPU seconds per decode (4x as wall)"
    )
    ap.add_argument("--budget", default="512M", help="CUBECAST_DECODE_BUDGET of the worker")
    ap.add_argument("--max-rss", type=float, default=1024, help="MiB a crafted decode may peak at")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    result = run(
        args.mutations,
        args.seed,
        args.timeout,
        log=lambda s: print(s, flush=True),
        budget=args.budget,
    )
    print(table(result))
    t = result.total()
    over = [c for c in result.crafted if c["peak_rss_mib"] > args.max_rss]
    print(
        f"{sum(t.values())} cases in {result.seconds:.0f} s: {t['crash']} crashes, "
        f"{t['hang']} hangs, {t['traceback']} tracebacks, {t['silent_wrong']} silent-wrong; "
        f"crafted decodes peaked at {result.crafted_max_rss / MiB:.0f} MiB RSS at most "
        f"({len(over)} over {args.max_rss:g} MiB), any decode at {result.max_rss / MiB:.0f} MiB"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"fuzz_seed{args.seed}_n{args.mutations}.json"
    path.write_text(
        json.dumps(
            {
                "command": " ".join(["python", "bench/fuzz.py", *sys.argv[1:]]),
                "mutations": args.mutations,
                "seed": args.seed,
                "budget": args.budget,
                "seconds": round(result.seconds, 1),
                "totals": dict(t),
                "by_kind": {k: dict(v) for k, v in result.counts.items()},
                "crafted": result.crafted,
                "crafted_max_rss_mib": round(result.crafted_max_rss / MiB, 1),
                "max_rss_mib": round(result.max_rss / MiB, 1),
                "examples": result.examples,
            },
            indent=1,
        )
    )
    print(f"wrote {path}")
    if t["crash"] or t["hang"] or t["traceback"] or t["silent_wrong"] or over:
        sys.exit(1)


if __name__ == "__main__":
    main()
