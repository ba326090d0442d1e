"""Crafted files cannot make a decode allocate what they claim, and no flipped bit of a
stored manifest decodes silently.

Each test reproduces one of the "Integrity" findings against the reader as it was (small
files declaring gigabytes: manifest dimensions, a zstd mask bomb, a sparse tar member,
stream frames larger than the manifest says; a manifest with no checksum) with variants:
the refusal is a one-line CubecastError and comes before the allocation (measured with
tracemalloc, which sees numpy's buffers and Python's bytes).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import subprocess
import sys
import tarfile
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard

from pipeline import EncodeOptions
from pipeline.codec.decode import decode_cube
from pipeline.codec.encode import encode_cube
from pipeline.codec.encoded import MANIFEST_FILE, EncodedCube
from pipeline.codec.manifest import Manifest
from pipeline.codec.masks import MaskWriter, decode_masks
from pipeline.codec.pyav_engine import DecodeStats, PyAVWriter
from pipeline.codec.settings import VideoSettings
from pipeline.errors import CorruptStreamError, CubecastError, ManifestError
from pipeline.taco.read import open_sample
from tests.conftest import s2_like

MiB = 1 << 20
BUDGET_ENV = "CUBECAST_DECODE_BUDGET"
ROWS = "METADATA/level0.parquet"


# ---------------------------------------------------------------------------------------
# cubes, and crafting helpers
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small cube (4 x 24 x 20: an RGB stream, a one-band stream, SCL, masks) as a folder,
    a tar and a shard, the same cube with SCL in FFV1 (as format version 2 wrote class
    layers), and a larger (96 x 80) and smaller (12 x 10) cube's streams (SCL in FFV1)."""
    from pipeline.taco.pack import DatasetInfo, encode_sample, pack_shards

    warnings.simplefilter("ignore")
    root = tmp_path_factory.mktemp("budgets")
    opts = EncodeOptions(crf=20)
    ds = s2_like(t=4, h=24, w=20, seed=1)
    enc = encode_cube(ds, opts)
    folder = enc.to_folder(root / "cube")
    tar = root / "cube.tar"
    tar.write_bytes(enc.to_bytes())
    sample = encode_sample(ds, opts, cube_id="cube_a")
    shard = pack_shards([sample], root / "shards", DatasetInfo(id="budgets"))[0]
    # as format versions 2 and 3 wrote them: SCL in FFV1, every video stream in Matroska
    old = EncodeOptions(crf=20, class_codec="ffv1", carrier="matroska")
    ffv1 = encode_cube(ds, old).to_folder(root / "ffv1")
    big = encode_cube(s2_like(t=4, h=96, w=80, seed=2), old).to_folder(root / "big")
    small = encode_cube(s2_like(t=4, h=12, w=10, seed=3), old).to_folder(root / "small")
    return {
        "ds": ds,
        "folder": folder,
        "ffv1": ffv1,
        "tar": tar,
        "shard": shard,
        "big": big,
        "small": small,
        "digest": digest(decode_cube(EncodedCube.from_folder(folder))),
        "shard_digest": digest(open_sample(str(shard), "cube_a")),
    }


def digest(ds: Any) -> str:
    h = hashlib.sha256()
    for name in sorted(map(str, ds.variables)):
        v = ds.variables[name]
        h.update(f"{name}|{v.dtype}|{v.dims}|{sorted(v.attrs.items())!r}".encode())
        vals = np.asarray(v.values)
        h.update(vals.tobytes() if vals.dtype.kind != "O" else repr(vals.tolist()).encode())
    h.update(repr(sorted(ds.attrs.items())).encode())
    return h.hexdigest()


def load(raw: bytes) -> dict[str, Any]:
    if raw[:4] == b"\x28\xb5\x2f\xfd":
        raw = zstandard.ZstdDecompressor().stream_reader(raw).read(64 * MiB)
    return json.loads(raw)


def dump(m: dict[str, Any], checksum: bool = True) -> bytes:
    """As a crafter would store it: a valid, well-formed (checksummed) manifest."""
    text = json.dumps(m, separators=(",", ":")).encode()
    return zstandard.ZstdCompressor(level=19, write_checksum=checksum).compress(text)


def resign(m: dict[str, Any], file: str, data: bytes) -> None:
    """The manifest's size and SHA-256 of ``file`` made to agree with ``data``."""
    for s in m["streams"]:
        if s["file"] == file:
            s["nbytes"], s["sha256"] = len(data), hashlib.sha256(data).hexdigest()


def crafted_folder(
    base: dict[str, Any],
    dst: Path,
    edit: Callable[[dict[str, Any]], None] | None = None,
    files: dict[str, bytes] | None = None,
    src: str = "folder",
) -> Path:
    shutil.copytree(base[src], dst)
    m = load((dst / MANIFEST_FILE).read_bytes())
    for name, data in (files or {}).items():
        (dst / name).write_bytes(data)
        resign(m, name, data)
    if edit:
        edit(m)
    (dst / MANIFEST_FILE).write_bytes(dump(m))
    return dst


def as_tar(folder: Path, dst: Path) -> Path:
    with tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tar:
        for p in [folder / MANIFEST_FILE, *sorted(folder.iterdir())]:
            if p.name != MANIFEST_FILE or p == folder / MANIFEST_FILE:
                tar.add(p, arcname=p.name)
    return dst


def rows_with(raw: bytes, digests: dict[str, str | None]) -> bytes:
    """The shard's level-0 rows with ``manifest_sha256`` set (None: the column dropped)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(raw))
    if "manifest_sha256" in table.column_names:
        table = table.drop(["manifest_sha256"])
    if None not in digests.values():
        ids = table.column("id").to_pylist()
        table = table.append_column("manifest_sha256", pa.array([digests[i] for i in ids]))
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def crafted_shard(
    src: Path,
    dst: Path,
    replace: dict[str, bytes],
    sid: str = "cube_a",
    row_digest: str | None | bool = True,
) -> Path:
    """``src`` with children replaced (CRCs right: corruption before zipping, or a crafter);
    ``row_digest``: True = the row made to agree with the new manifest, False = the row
    left as it was, None = no digest column (a shard from before manifests had one)."""
    with zipfile.ZipFile(src) as zin:
        members = {i.filename: zin.read(i) for i in zin.infolist()}
    prefix = f"DATA/{sid}/"
    for child, data in replace.items():
        members[prefix + child] = data
    if row_digest is not False:
        value = None if row_digest is None else hashlib.sha256(members[prefix + "manifest_json"])
        members[ROWS] = rows_with(members[ROWS], {sid: value and value.hexdigest()})
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for name, data in members.items():
            zout.writestr(name, data)
    return dst


def shard_manifest(shard: Path, sid: str = "cube_a") -> dict[str, Any]:
    with zipfile.ZipFile(shard) as z:
        return load(z.read(f"DATA/{sid}/manifest_json"))


class Peak:
    """Peak traced allocation (numpy buffers, bytes) inside the block, in bytes."""

    def __enter__(self) -> Peak:
        tracemalloc.start()
        tracemalloc.reset_peak()
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def refused_small(call: Callable[[], Any], bound: int = 64 * MiB, match: str | None = None) -> str:
    """``call`` raises a one-line CubecastError, having allocated less than ``bound``."""
    with Peak() as p, pytest.raises(CubecastError, match=match) as info:
        call()
    assert p.peak < bound, f"allocated {p.peak / MiB:.0f} MiB before refusing"
    text = str(info.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------------------------------
# the budget itself
# ---------------------------------------------------------------------------------------
def test_budget_default_and_env(monkeypatch):
    from pipeline.codec import budget

    monkeypatch.delenv(budget.ENV, raising=False)
    phys = budget.physical_memory()
    assert budget.decode_budget() == (max(budget.GIB, phys // 2) if phys else budget.FALLBACK)
    for text, n in (("512M", 512 * MiB), ("4GiB", 4 << 30), ("2g", 2 << 30), ("1000", 1000)):
        monkeypatch.setenv(BUDGET_ENV, text)
        assert budget.decode_budget() == n
    monkeypatch.setenv(BUDGET_ENV, "lots")
    with pytest.raises(CubecastError, match=budget.ENV):
        budget.decode_budget()


def test_legit_decode_fits_a_small_budget_and_windows_fit_a_smaller_one(base, monkeypatch):
    from pipeline.codec import budget

    monkeypatch.setenv(BUDGET_ENV, "2M")
    assert digest(decode_cube(EncodedCube.from_folder(base["folder"]))) == base["digest"]
    monkeypatch.setenv(BUDGET_ENV, "100K")
    enc = EncodedCube.from_folder(base["folder"])
    with pytest.raises(budget.DecodeBudgetError, match="decode budget"):
        decode_cube(enc)
    from pipeline.codec.decode import iter_decode

    monkeypatch.setenv(BUDGET_ENV, "600K")
    assert len(list(iter_decode(enc, window=1))) == 4  # one frame at a time fits


# ---------------------------------------------------------------------------------------
# 1a: manifests declaring huge sizes
# ---------------------------------------------------------------------------------------
def _huge_frames(m: dict[str, Any], side: int = 32768) -> None:
    m["sizes"]["y"] = m["sizes"]["x"] = side


@pytest.mark.parametrize("budget_text", ["1G", "256G"])
@pytest.mark.parametrize("container", ["folder", "tar", "shard"])
@pytest.mark.parametrize("variables", [None, ["SCL"], ["B8A"]])
def test_huge_declared_frames_refused_before_allocation(
    base, tmp_path, monkeypatch, budget_text, container, variables
):
    """3 x 32768 x 32768 (the hostile tester's 28 kB shard): over a 1 GiB budget it is the
    budget; under a 256 GiB one, the streams' own frames (24 x 20) refuse it."""
    monkeypatch.setenv(BUDGET_ENV, budget_text)
    folder = crafted_folder(base, tmp_path / "c", _huge_frames)
    if container == "folder":
        call = lambda: decode_cube(EncodedCube.from_folder(folder), variables)  # noqa: E731
    elif container == "tar":
        tar = as_tar(folder, tmp_path / "c.tar")
        call = lambda: decode_cube(EncodedCube.open(tar), variables)  # noqa: E731
    else:
        m = shard_manifest(base["shard"])
        _huge_frames(m)
        shard = crafted_shard(base["shard"], tmp_path / "c.tacozip", {"manifest_json": dump(m)})
        call = lambda: open_sample(str(shard), "cube_a", variables)  # noqa: E731
    text = refused_small(call)
    if budget_text == "1G":
        assert "decode budget" in text
    elif variables == ["SCL"]:  # the class layer's first chunk declares its true size
        assert "scl.codes.zst: class chunk 0 declares 1920 bytes" in text
        assert "1 x 32768 x 32768" in text
    else:
        assert "frames are" in text and "manifest says 32768x32768" in text


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda m: m["sizes"].update(time=1 << 20), id="a million frames"),
        pytest.param(
            lambda m: (
                m["sizes"].update(y=2048, x=2048),
                [s.update(frames=[]) for s in m["streams"]],
            ),
            id="2048 px, no frame stored",
        ),
        pytest.param(
            lambda m: m["attrs"].update(
                {f"a{i}": {"__range__": [0, 1, 1 << 25], "dtype": "int64"} for i in range(3)}
            ),
            id="three 256 MiB ranges in attrs",
        ),
        pytest.param(
            lambda m: m["coords"]["x"].update(
                values={"__range__": [0, 1, 1 << 24], "dtype": "U64"}
            ),
            id="a 4 GiB string coordinate",
        ),
    ],
)
def test_declared_arrays_over_the_budget_are_refused_before_allocation(
    base, tmp_path, monkeypatch, edit
):
    monkeypatch.setenv(BUDGET_ENV, "128M")
    folder = crafted_folder(base, tmp_path / "c", edit)
    text = refused_small(lambda: decode_cube(EncodedCube.from_folder(folder)))
    assert str(folder) in text


# ---------------------------------------------------------------------------------------
# 1b: zstd mask bombs
# ---------------------------------------------------------------------------------------
def bomb(n: int, declare_size: bool = True) -> bytes:
    """A zstd frame of ``n`` zero bytes, made without holding them (a few kB for 512 MiB)."""
    cobj = zstandard.ZstdCompressor(level=3).compressobj(size=n if declare_size else -1)
    block = bytes(16 * MiB)
    out = [cobj.compress(block[: min(len(block), n - i)]) for i in range(0, n, len(block))]
    return b"".join(out) + cobj.flush()


def _mask_bits(base: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    m = load((base["folder"] / MANIFEST_FILE).read_bytes())
    s = next(s for s in m["streams"] if s["kind"] == "mask")
    data = (base["folder"] / s["file"]).read_bytes()
    shape = (len(s["planes"]), 24, 20)
    return decode_masks(data, s["chunk_offsets"], s["keyint"], shape, 0, 4), s


@pytest.mark.parametrize("declare_size", [True, False])
@pytest.mark.parametrize("size", [512 * MiB, 96 * MiB])
def test_zstd_mask_bomb_is_refused_before_it_inflates(base, tmp_path, size, declare_size):
    _, s = _mask_bits(base)
    blob = bomb(size, declare_size)
    assert len(blob) < 64 * 1024
    folder = crafted_folder(base, tmp_path / "c", files={s["file"]: blob})
    text = refused_small(lambda: decode_cube(EncodedCube.from_folder(folder)), bound=16 * MiB)
    assert s["file"] in text and "mask chunk 0" in text


@pytest.mark.parametrize("where", ["bomb in chunk 1", "one byte more", "one byte less"])
def test_mask_chunks_must_hold_exactly_their_frames(base, tmp_path, where):
    bits, s = _mask_bits(base)
    buf = io.BytesIO()
    w = MaskWriter(buf, chunk_frames=2)
    for frame in bits:
        w.write(frame)
    w.close()
    data, offsets = buf.getvalue(), w.offsets
    chunk0, chunk1 = data[: offsets[1]], data[offsets[1] :]
    raw1 = zstandard.ZstdDecompressor().decompress(chunk1)
    cctx = zstandard.ZstdCompressor()
    if where == "bomb in chunk 1":
        chunk1 = bomb(256 * MiB)
    elif where == "one byte more":
        chunk1 = cctx.compress(raw1 + b"\0")
    else:
        chunk1 = cctx.compress(raw1[:-1])

    def edit(m: dict[str, Any]) -> None:
        ms = next(x for x in m["streams"] if x["kind"] == "mask")
        ms["keyint"], ms["chunk_offsets"] = 2, [0, len(chunk0)]

    folder = crafted_folder(base, tmp_path / "c", edit, {s["file"]: chunk0 + chunk1})
    refused_small(lambda: decode_cube(EncodedCube.from_folder(folder)), match="mask chunk 1")
    # the window before the bad chunk still decodes
    got = decode_cube(EncodedCube.from_folder(folder), time=slice(0, 2))
    assert digest(got) == digest(
        decode_cube(EncodedCube.from_folder(base["folder"]), time=slice(0, 2))
    )


# ---------------------------------------------------------------------------------------
# 1b': class-layer chunks (zstd-codes)
# ---------------------------------------------------------------------------------------
def _class_stream(base: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """The base cube's SCL codes (4, 1, 24, 20) and its stream entry."""
    from pipeline.codec.classcodes import codes_chunk

    m = load((base["folder"] / MANIFEST_FILE).read_bytes())
    s = next(s for s in m["streams"] if s["kind"] == "categorical")
    assert s["codec"] == "zstd-codes" and s["chunk_offsets"] == [0]
    data = (base["folder"] / s["file"]).read_bytes()
    return codes_chunk(data, 4, (1, 24, 20), s["pix_fmt"], "scl", 0), s


def _chunk(body: bytes, palette: list[int] = ()) -> bytes:
    """A class chunk: its palette header, then ``body`` (a zstd frame)."""
    return np.array([len(palette), *palette], dtype="<u2").tobytes() + body


@pytest.mark.parametrize("declare_size", [True, False])
@pytest.mark.parametrize("size", [512 * MiB, 96 * MiB])
def test_class_chunk_claiming_gigabytes_is_refused_before_it_inflates(
    base, tmp_path, size, declare_size
):
    """The chunk's zstd frame declares (or hides) a size other than its 4 frames of 24 x 20
    take: refused from its header, nothing decompressed."""
    _, s = _class_stream(base)
    blob = _chunk(bomb(size, declare_size))
    folder = crafted_folder(base, tmp_path / "c", files={s["file"]: blob})
    call = lambda: decode_cube(EncodedCube.from_folder(folder), ["SCL"])  # noqa: E731
    text = refused_small(call, bound=16 * MiB, match="class chunk 0 declares")
    assert s["file"] in text and ("no size" in text if not declare_size else str(size) in text)
    assert isinstance(_error(folder), CorruptStreamError)


def _two_chunks(codes: np.ndarray, edit: str) -> tuple[bytes, list[int]]:
    """The SCL codes rewritten as two chunks of 2 frames, chunk 1 made hostile by ``edit``."""
    from pipeline.codec.classcodes import CodesWriter

    buf = io.BytesIO()
    w = CodesWriter(buf, chunk_frames=2, pix_fmt="gray")
    for frame in codes:
        w.write(frame)
    w.close()
    data, offsets = buf.getvalue(), w.offsets
    chunk0, chunk1 = data[: offsets[1]], data[offsets[1] :]
    raw1 = zstandard.ZstdDecompressor().decompress(chunk1[2:])
    cctx = zstandard.ZstdCompressor()
    chunk1 = {
        "bomb in chunk 1": _chunk(bomb(256 * MiB)),
        "one byte more": _chunk(cctx.compress(raw1 + b"\0")),
        "one byte less": _chunk(cctx.compress(raw1[:-1])),
        "bytes after its frame": chunk1 + b"\0\0",
        "not zstd": _chunk(b"\0" * 64),
        "257-entry palette": _chunk(cctx.compress(raw1), list(range(257))),
        "palette past the chunk": np.array([200], "<u2").tobytes() + cctx.compress(raw1),
        "palette not increasing": _chunk(cctx.compress(raw1), [9, 4]),
        "index past the palette": _chunk(cctx.compress(bytes([2]) * len(raw1)), [4, 9]),
        "truncated": chunk1[:1],
    }[edit]
    return chunk0 + chunk1, [0, len(chunk0)]


TWO_CHUNK_EDITS = [
    "bomb in chunk 1",
    "one byte more",
    "one byte less",
    "bytes after its frame",
    "not zstd",
    "257-entry palette",
    "palette past the chunk",
    "palette not increasing",
    "index past the palette",
    "truncated",
]


@pytest.mark.parametrize("edit", TWO_CHUNK_EDITS)
def test_class_chunks_must_hold_exactly_their_frames(base, tmp_path, edit):
    codes, s = _class_stream(base)
    data, offsets = _two_chunks(codes[:, 0], edit)

    def chunked(m: dict[str, Any]) -> None:
        cs = next(x for x in m["streams"] if x["kind"] == "categorical")
        cs["keyint"], cs["chunk_offsets"] = 2, offsets

    folder = crafted_folder(base, tmp_path / "c", chunked, {s["file"]: data})
    text = refused_small(lambda: decode_cube(EncodedCube.from_folder(folder)), bound=16 * MiB)
    assert f"{s['file']}: class chunk 1" in text
    assert isinstance(_error(folder), CorruptStreamError)
    # the window before the bad chunk still decodes
    got = decode_cube(EncodedCube.from_folder(folder), time=slice(0, 2))
    assert digest(got) == digest(
        decode_cube(EncodedCube.from_folder(base["folder"]), time=slice(0, 2))
    )


@pytest.mark.parametrize("offsets", [[0, 10**9], [0, -5], [0, 0], [5, 2], [0]], ids=str)
def test_class_chunk_offsets_outside_the_stream_are_refused(base, tmp_path, offsets):
    def edit(m: dict[str, Any]) -> None:
        cs = next(x for x in m["streams"] if x["kind"] == "categorical")
        cs["keyint"], cs["chunk_offsets"] = 2, offsets

    folder = crafted_folder(base, tmp_path / "c", edit)
    text = refused_small(lambda: decode_cube(EncodedCube.from_folder(folder), ["SCL"]))
    assert "scl.codes.zst: " in text and "chunk" in text
    assert isinstance(_error(folder), CorruptStreamError)


def test_class_stream_of_another_pixel_format_is_refused(base, tmp_path):
    folder = crafted_folder(
        base,
        tmp_path / "c",
        lambda m: next(x for x in m["streams"] if x["kind"] == "categorical").update(
            pix_fmt="gbrp12le"
        ),
    )
    text = refused_small(lambda: decode_cube(EncodedCube.from_folder(folder), ["SCL"]))
    assert "scl.codes.zst" in text and "gbrp12le" in text


# ---------------------------------------------------------------------------------------
# 1c: tar members
# ---------------------------------------------------------------------------------------
def sparse_member(name: str, size: int) -> tuple[tarfile.TarInfo, bytes]:
    """A PAX (GNU 0.1) sparse member: no data, one hole of ``size`` bytes."""
    info = tarfile.TarInfo(name)
    info.size = 0
    info.pax_headers = {
        "GNU.sparse.map": f"{size},0",
        "GNU.sparse.size": str(size),
        "GNU.sparse.name": name,
    }
    return info, b""


def tar_with(folder: Path, dst: Path, extra: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    names = {i.name for i, _ in extra}
    with tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(folder / MANIFEST_FILE, arcname=MANIFEST_FILE)
        for p in sorted(folder.iterdir()):
            if p.name != MANIFEST_FILE and p.name not in names:
                tar.add(p, arcname=p.name)
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data))
    return dst


def test_sparse_tar_member_is_never_read_by_open(base, tmp_path):
    tar = tar_with(base["folder"], tmp_path / "s.tar", [sparse_member("junk", 512 * MiB)])
    assert tar.stat().st_size < 64 * 1024
    with Peak() as p:
        enc = EncodedCube.open(tar)
        assert enc.nbytes > 0 and enc.manifest.n_frames == 4
        assert digest(decode_cube(enc)) == base["digest"]  # only its own members are read
    assert p.peak < 32 * MiB


@pytest.mark.parametrize("stream", ["scl.codes.zst", "masks.bits.zst"])
def test_sparse_stream_member_is_refused_before_reading(base, tmp_path, stream):
    tar = tar_with(base["folder"], tmp_path / "s.tar", [sparse_member(stream, 256 * MiB)])
    text = refused_small(lambda: decode_cube(EncodedCube.open(tar)), bound=16 * MiB)
    assert stream in text


def test_tar_member_longer_than_the_manifest_says_is_refused_before_reading(base, tmp_path):
    big = tarfile.TarInfo("scl.codes.zst")
    data = bytes(96 * MiB)
    big.size = len(data)
    tar = tar_with(base["folder"], tmp_path / "b.tar", [(big, data)])
    refused_small(lambda: decode_cube(EncodedCube.open(tar)), bound=16 * MiB, match="scl.codes")


def test_tar_manifest_member_over_the_limit_is_refused_before_reading(base, tmp_path):
    info = tarfile.TarInfo(MANIFEST_FILE)
    info.size = 80 * MiB
    with tarfile.open(tmp_path / "m.tar", "w") as tar:
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    refused_small(lambda: EncodedCube.open(tmp_path / "m.tar"), bound=16 * MiB)


# the child's own peak: VmHWM at exit (ru_maxrss of a child started by fork + exec also
# counts the parent's RSS at the fork, which is pytest's: a few hundred MiB to 1 GiB)
PEAK = (
    "import atexit, sys\n"
    "def peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    '            sys.stderr.write(f"\\nVmHWM {int(line.split()[1]) * 1024}\\n")\n'
    "atexit.register(peak)\n"
    "sys.argv = ['cubecast', *sys.argv[1:]]\n"
    "from pipeline.cli import main\n"
    "main()\n"
)


def _rss_of(args: list[str]) -> tuple[int, str, int]:
    """Exit code, output, and the peak RSS (bytes) of ``cubecast ARGS`` in a child."""
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, *args], capture_output=True, text=True, timeout=300
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("VmHWM ")]
    return proc.returncode, proc.stdout + proc.stderr, int(lines[-1].split()[1])


def test_cli_info_on_a_tar_with_a_sparse_member_reads_only_the_manifest(base, tmp_path):
    size = 1 << 30
    tar = tar_with(base["folder"], tmp_path / "s.tar", [sparse_member("junk", size)])
    code, out, rss = _rss_of(["info", str(tar)])
    assert code == 0, out
    assert "scl" in out
    assert rss < size // 2, f"cubecast info peaked at {rss / MiB:.0f} MiB"


# ---------------------------------------------------------------------------------------
# 1d: streams whose frames are not the manifest's
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("donor", ["big", "small"])
@pytest.mark.parametrize("stream", ["scl.mkv", "b8a.mkv", "b02_b03_b04.mkv"])
def test_stream_with_frames_of_another_size_is_refused(base, tmp_path, donor, stream):
    """The hostile tester's case (frames larger than the manifest says decoded cropped,
    wrong values), and smaller ones, in each kind of stream (FFV1 gray, AV1 gray12le and
    gbrp12le; the large cube has one stream per band: its B04 stands in for RGB)."""
    have = stream if (base[donor] / stream).exists() else "b04.mkv"
    data = (base[donor] / have).read_bytes()
    folder = crafted_folder(base, tmp_path / "c", files={stream: data}, src="ffv1")
    text = refused_small(lambda: decode_cube(EncodedCube.from_folder(folder)))
    assert stream in text and "frames are" in text
    assert isinstance(_error(folder), CorruptStreamError)


def _error(folder: Path) -> BaseException:
    try:
        decode_cube(EncodedCube.from_folder(folder))
    except CubecastError as exc:
        return exc
    raise AssertionError("decoded")


def test_stream_of_another_pixel_format_is_refused(base, tmp_path):
    """b8a.mkv (AV1, gray12le) of the same cube stands in for scl.mkv (FFV1, gray)."""
    data = (base["ffv1"] / "b8a.mkv").read_bytes()
    folder = crafted_folder(base, tmp_path / "c", files={"scl.mkv": data}, src="ffv1")
    text = refused_small(lambda: decode_cube(EncodedCube.from_folder(folder), ["SCL"]))
    assert "scl.mkv" in text and "gray12le" in text


def test_huge_frames_are_refused_before_any_is_decoded(base, tmp_path):
    """A 4096 x 4096 stream where the manifest says 24 x 20: refused from the container's
    header, before FFmpeg decodes (allocates) a frame."""
    buf = io.BytesIO()
    w = PyAVWriter(buf, 4096, 4096, VideoSettings(codec="ffv1", pix_fmt="gray", lossless=True))
    for _ in range(4):
        w.write(np.zeros((1, 4096, 4096), np.uint8))
    w.close()
    folder = crafted_folder(base, tmp_path / "c", files={"scl.mkv": buf.getvalue()}, src="ffv1")
    stats = DecodeStats()
    with pytest.raises(CorruptStreamError, match="scl.mkv: frames are (larger|4096x4096)"):
        decode_cube(EncodedCube.from_folder(folder), ["SCL"], stats=stats)
    assert stats.frames_decoded == 0


# ---------------------------------------------------------------------------------------
# 2: manifest checksums
# ---------------------------------------------------------------------------------------
def test_new_manifests_carry_a_checksum_in_the_file_and_in_the_shard_row(base):
    import pyarrow.parquet as pq

    raw = (base["folder"] / MANIFEST_FILE).read_bytes()
    assert zstandard.get_frame_parameters(raw).has_checksum
    with zipfile.ZipFile(base["shard"]) as z:
        child = z.read("DATA/cube_a/manifest_json")
        rows = pq.read_table(io.BytesIO(z.read(ROWS))).to_pylist()
    assert zstandard.get_frame_parameters(child).has_checksum
    assert rows[0]["manifest_sha256"] == hashlib.sha256(child).hexdigest()


def _flips(n_bytes: int, sample: int, seed: int) -> list[int]:
    """Every bit of the first 24 and last 8 bytes (zstd header, checksum), and ``sample``
    random bits of the rest."""
    edges = [b * 8 + k for b in [*range(24), *range(n_bytes - 8, n_bytes)] for k in range(8)]
    rng = random.Random(seed)
    body = rng.sample(range(24 * 8, (n_bytes - 8) * 8), sample)
    return sorted(set(edges + body))


def test_every_sampled_bit_flip_of_a_folder_manifest_is_refused_or_identical(base, tmp_path):
    raw = (base["folder"] / MANIFEST_FILE).read_bytes()
    folder = tmp_path / "c"
    shutil.copytree(base["folder"], folder)
    silent = []
    for bit in _flips(len(raw), 320, seed=1):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        (folder / MANIFEST_FILE).write_bytes(bytes(flipped))
        try:
            got = digest(decode_cube(EncodedCube.from_folder(folder)))
        except CubecastError:
            continue
        if got != base["digest"]:
            silent.append(bit)
    assert not silent, f"bits {silent} of the manifest decoded silently wrong"


def test_sampled_bit_flips_of_a_shard_manifest_are_refused_or_identical(base, tmp_path):
    with zipfile.ZipFile(base["shard"]) as z:
        raw = z.read("DATA/cube_a/manifest_json")
    silent = []
    for i, bit in enumerate(_flips(len(raw), 60, seed=2)[::4]):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        shard = crafted_shard(
            base["shard"],
            tmp_path / f"f{i}.tacozip",
            {"manifest_json": bytes(flipped)},
            row_digest=False,
        )
        try:
            got = digest(open_sample(str(shard), "cube_a"))
        except CubecastError:
            continue
        finally:
            shard.unlink()
        if got != base["shard_digest"]:
            silent.append(bit)
    assert not silent


def _value_changed(m: dict[str, Any]) -> None:
    """A change a flipped bit can make that still parses: a lossless band's clip range."""
    c = next(c for c in m["channels"] if c.get("valid_max") is not None)
    c["valid_max"] = c["valid_max"] * 0.6


def test_a_changed_manifest_without_zstd_checksum_is_refused_by_the_shard_row(base, tmp_path):
    m = shard_manifest(base["shard"])
    _value_changed(m)
    shard = crafted_shard(
        base["shard"],
        tmp_path / "x.tacozip",
        {"manifest_json": dump(m, checksum=False)},
        row_digest=False,
    )
    with pytest.raises(ManifestError, match="SHA-256"):
        open_sample(str(shard), "cube_a")


def test_flipped_checksum_flag_is_refused(base, tmp_path):
    raw = bytearray((base["folder"] / MANIFEST_FILE).read_bytes())
    raw[4] ^= 0x04  # Frame_Header_Descriptor: Content_Checksum_flag off
    with pytest.raises(ManifestError):
        Manifest.from_json(bytes(raw))


@pytest.mark.parametrize("form", ["zstd, no checksum", "plain JSON"])
def test_old_manifests_still_read(base, tmp_path, form):
    m = load((base["folder"] / MANIFEST_FILE).read_bytes())
    text = json.dumps(m).encode()
    raw = dump(m, checksum=False) if form != "plain JSON" else text
    folder = tmp_path / "c"
    shutil.copytree(base["folder"], folder)
    (folder / MANIFEST_FILE).write_bytes(raw)
    assert digest(decode_cube(EncodedCube.from_folder(folder))) == base["digest"]


def test_old_shards_without_a_manifest_digest_still_read(base, tmp_path):
    m = shard_manifest(base["shard"])
    shard = crafted_shard(
        base["shard"],
        tmp_path / "old.tacozip",
        {"manifest_json": dump(m, checksum=False)},
        row_digest=None,
    )
    assert digest(open_sample(str(shard), "cube_a")) == base["shard_digest"]


def test_restage_checks_and_adds_the_manifest_digest(base, tmp_path):
    from pipeline.taco.staged import restage

    m = shard_manifest(base["shard"])
    old = crafted_shard(
        base["shard"],
        tmp_path / "old.tacozip",
        {"manifest_json": dump(m, checksum=False)},
        row_digest=None,
    )
    staged = restage(old, "cube_a", {"split": ""}, tmp_path / "stage")
    raw = (staged.folder / MANIFEST_FILE).read_bytes()
    assert staged.metadata()["manifest_sha256"] == hashlib.sha256(raw).hexdigest()
    with pytest.raises(CorruptStreamError, match="SHA-256"):
        restage(old, "cube_a", {"manifest_sha256": "0" * 64}, tmp_path / "stage2")
