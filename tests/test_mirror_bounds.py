"""Hostile HTTP mirrors on 127.0.0.1: downloads stay within the size a mirror declares (or a
cap), the disk budget and a deadline; remote shards on a server that ignores Range are read
once; names in a mirror index never leave the cache. The servers (``bench/fuzz_mirrors.py``)
stop by themselves, so a client without these bounds fails its test instead of hanging."""

from __future__ import annotations

import hashlib
import random
import sys
import time
import zipfile
from pathlib import Path

import pytest

from pipeline.errors import CubecastError, SourceError
from pipeline.sources.download import RetryPolicy
from pipeline.sources.mirror import HttpMirror, open_mirror

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from fuzz_mirrors import Behaviour, HostileServer, index_line, zip_bytes  # noqa: E402

POLICY = RetryPolicy(retries=1, backoff=0.01, timeout=5)
SERVED_SLACK = 8 << 20  # socket buffers between the server and a client that stopped reading


def blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def mirror(srv: HostileServer, cache: Path, **kw) -> HttpMirror:
    return HttpMirror(srv.url, cache, policy=kw.pop("policy", POLICY), progress=False, **kw)


def site(data: bytes, b: Behaviour, size: bool | int = True, rel: str = "f.bin") -> dict:
    return {rel: b, "SHA256SUMS": Behaviour(index_line(data, rel, size).encode())}


def nothing_left(cache: Path) -> bool:
    return not any(p.is_file() for p in cache.rglob("*")) if cache.exists() else True


# -- 1. size: what the mirror declares, or a cap --------------------------------------------
@pytest.mark.parametrize("chunked", [False, True], ids=["close-delimited", "chunked"])
@pytest.mark.parametrize("n", [1, 70_000, 1_000_000])
def test_endless_stream_stops_past_the_size_the_index_declares(tmp_path, chunked, n):
    data = blob(n)
    b = Behaviour(body=data, endless=True, chunked=chunked, limit=48 << 20)
    with HostileServer(site(data, b)) as srv:
        with pytest.raises(SourceError, match=rf"more than the {n:,} bytes the index declares"):
            mirror(srv, tmp_path / "c").fetch("f.bin")
        assert srv.bytes_served("f.bin") < n + SERVED_SLACK
    assert nothing_left(tmp_path / "c")  # the partial file is removed


@pytest.mark.parametrize("chunked", [False, True], ids=["close-delimited", "chunked"])
def test_endless_stream_with_no_declared_size_stops_at_the_cap(tmp_path, monkeypatch, chunked):
    monkeypatch.setenv("CUBECAST_DOWNLOAD_CAP", "1MB")
    data = blob(5000)
    b = Behaviour(body=data, endless=True, chunked=chunked, limit=48 << 20)
    with HostileServer(site(data, b, size=False)) as srv:
        with pytest.raises(SourceError, match=r"more than the 1,000,000 bytes the cap allows"):
            mirror(srv, tmp_path / "c").fetch("f.bin")
        assert srv.bytes_served("f.bin") < 1_000_000 + SERVED_SLACK
    assert nothing_left(tmp_path / "c")


def test_endless_index_stops_at_its_cap(tmp_path, monkeypatch):
    monkeypatch.setenv("CUBECAST_DOWNLOAD_CAP", "2MB")
    b = Behaviour(endless=True, limit=48 << 20)
    with HostileServer({"SHA256SUMS": b}) as srv:
        with pytest.raises(SourceError, match=r"SHA256SUMS: the server sent more than"):
            mirror(srv, tmp_path / "c").list("*")
        assert srv.bytes_served("SHA256SUMS") < 2_000_000 + SERVED_SLACK
    assert nothing_left(tmp_path / "c")


@pytest.mark.parametrize(
    "lie, sized",
    [(-1000, True), (+1000, True), (10**12, False)],
    ids=["shorter-than-index", "longer-than-index", "terabyte-unsized"],
)
def test_a_server_lying_about_content_length_is_refused(tmp_path, monkeypatch, lie, sized):
    monkeypatch.setenv("CUBECAST_DOWNLOAD_CAP", "1MB")
    data = blob(50_000)
    length = lie if lie > 10**6 else len(data) + lie
    with HostileServer(site(data, Behaviour(body=data, length=length), sized)) as srv:
        with pytest.raises(SourceError, match=rf"the server declares {length:,} bytes"):
            mirror(srv, tmp_path / "c").fetch("f.bin")
        assert len(srv.gets("f.bin")) == 1  # refused on the headers, not retried
    assert nothing_left(tmp_path / "c")


def test_sized_and_plain_index_lines_both_read(tmp_path):
    a, b = blob(3000, 1), blob(4000, 2)
    index = f"{index_line(a, 'x/a.bin')}\n{index_line(b, 'b 2.bin', size=False)}\n"
    files = {
        "x/a.bin": Behaviour(a),
        "b 2.bin": Behaviour(b),
        "SHA256SUMS": Behaviour(index.encode()),
    }
    with HostileServer(files) as srv:
        m = mirror(srv, tmp_path / "c")
        assert m.sizes == {"x/a.bin": 3000}
        assert m.fetch("x/a.bin").read_bytes() == a and m.fetch("b 2.bin").read_bytes() == b


# -- 2. time: one deadline per file -----------------------------------------------------------
@pytest.mark.parametrize("sized", [False, True], ids=["plain-index", "sized-index"])
@pytest.mark.parametrize("fast", [0, 100_000], ids=["from-the-start", "after-100kB"])
def test_a_trickling_server_fails_at_the_deadline(tmp_path, monkeypatch, fast, sized):
    monkeypatch.setenv("CUBECAST_DOWNLOAD_DEADLINE", "1.5")
    data = blob(fast + 40)  # the server trickles the last 40 bytes over 10 s, then stops
    b = Behaviour(body=data, trickle=0.25, trickle_after=fast)
    with HostileServer(site(data, b, sized)) as srv:
        start = time.monotonic()
        with pytest.raises(SourceError, match=r"past its 1.5 s deadline"):
            mirror(srv, tmp_path / "c").fetch("f.bin")
        assert time.monotonic() - start < 4


def test_trickled_headers_fail_at_the_deadline(tmp_path, monkeypatch):
    monkeypatch.setenv("CUBECAST_DOWNLOAD_DEADLINE", "1.5")
    data = blob(100)
    with HostileServer(site(data, Behaviour(body=data, head_trickle=0.02), False)) as srv:
        start = time.monotonic()
        with pytest.raises(SourceError, match=r"deadline"):
            mirror(srv, tmp_path / "c", policy=RetryPolicy(retries=0, timeout=5)).fetch("f.bin")
        assert time.monotonic() - start < 4


def test_the_deadline_follows_the_pace_when_no_size_is_declared(tmp_path):
    from pipeline.sources.limits import Limits

    data = blob(300_000)
    b = Behaviour(body=data, trickle=0.02, trickle_after=50_000)
    with HostileServer(site(data, b, size=False)) as srv:
        m = mirror(srv, tmp_path / "c", limits=Limits(floor=1.0, min_rate=1e6))
        start = time.monotonic()
        with pytest.raises(SourceError, match=r"deadline"):
            m.fetch("f.bin")
        assert time.monotonic() - start < 4


# -- 3. disk: the budget of the folder the cache lives in -----------------------------------
@pytest.mark.parametrize("sized", [False, True], ids=["plain-index", "sized-index"])
def test_a_download_past_the_cache_budget_is_refused_before_it_starts(tmp_path, monkeypatch, sized):
    monkeypatch.setenv("CUBECAST_MAX_CACHE", "100KB")
    data = blob(300_000)
    with HostileServer(site(data, Behaviour(body=data), sized)) as srv:
        m = open_mirror(srv.url, tmp_path / "c", progress=False)
        with pytest.raises(SourceError, match=r"disk budget of 100,000 bytes"):
            m.fetch("f.bin")
        assert len(srv.gets("f.bin")) == 1  # refused on the headers, not retried
    assert nothing_left(tmp_path / "c")


def test_an_undeclared_download_stops_at_the_max_disk_budget(tmp_path):
    data = blob(1000)
    b = Behaviour(body=data, endless=True, limit=48 << 20)
    with HostileServer(site(data, b, size=False)) as srv:
        m = open_mirror(
            srv.url,
            tmp_path / "w" / "raw",
            progress=False,
            max_disk=3_000_000,
            disk_root=tmp_path / "w",
        )
        with pytest.raises(SourceError, match=r"disk budget of 3,000,000 bytes"):
            m.fetch("f.bin")
    assert nothing_left(tmp_path / "w")


# -- 4. remote shards on a server that ignores Range ------------------------------------------
MEMBERS = {f"DATA/s/{i}.bin": blob(20_000 + 1000 * i, i) for i in range(8)}


def test_a_server_ignoring_range_serves_the_shard_once(tmp_path):
    from pipeline.taco.http import HttpRangeFile

    shard = zip_bytes(MEMBERS)
    with HostileServer({"f.bin": Behaviour(body=shard, ranges=False)}) as srv:
        with HttpRangeFile(f"{srv.url}/f.bin") as f, zipfile.ZipFile(f) as z:
            assert {n: z.read(n) for n in z.namelist()} == MEMBERS
        assert len(srv.gets("f.bin")) == 1
        assert srv.bytes_served("f.bin") == len(shard)


def test_a_shard_over_the_cap_on_a_server_ignoring_range_is_refused(monkeypatch):
    from pipeline.taco.http import HttpRangeFile

    monkeypatch.setenv("CUBECAST_RANGE_FALLBACK_MAX", "10KB")
    shard = zip_bytes(MEMBERS)
    with HostileServer({"f.bin": Behaviour(body=shard, ranges=False)}) as srv:
        with pytest.raises(SourceError, match=r"ignores Range requests .* over the 10,000"):
            with HttpRangeFile(f"{srv.url}/f.bin") as f:
                zipfile.ZipFile(f)
        assert len(srv.gets("f.bin")) == 1


@pytest.mark.parametrize("ranges", [True, False], ids=["honoured", "ignored"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_range_reads_at_random_positions(ranges, seed):
    from pipeline.taco.http import HttpRangeFile

    rng = random.Random(seed)
    data = blob(rng.randint(1, 200_000), seed)
    spans = [(rng.randrange(len(data) + 10), rng.randint(0, 50_000)) for _ in range(12)]
    with HostileServer({"f.bin": Behaviour(body=data, ranges=ranges)}) as srv:
        with HttpRangeFile(f"{srv.url}/f.bin") as f:
            for a, n in spans:
                f.seek(a)
                assert f.read(n) == data[a : a + n]
        assert srv.bytes_served("f.bin") <= (len(data) if not ranges else sum(n for _, n in spans))


def test_a_range_answer_longer_than_asked_is_refused():
    from pipeline.taco.http import HttpRangeFile

    data = blob(100_000)
    b = Behaviour(body=data, content_range=f"bytes 0-{len(data) - 1}/{len(data)}")
    with HostileServer({"f.bin": b}) as srv, HttpRangeFile(f"{srv.url}/f.bin") as f:
        f.seek(500)
        with pytest.raises(SourceError, match=r"asked for range 500-509"):
            f.read(10)


# -- 5. names from a mirror index ------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["../x", "../../x", "a/../../x", "/etc/passwd", "C:/x", "a\\..\\x", "x\x00y"]
)
def test_index_names_outside_the_cache_are_refused(tmp_path, name):
    data = blob(10)
    line = f"{hashlib.sha256(data).hexdigest()}  {name}\n"
    with HostileServer({"x": Behaviour(data), "SHA256SUMS": Behaviour(line.encode())}) as srv:
        with pytest.raises(CubecastError, match="SHA256SUMS: line 1: path"):
            mirror(srv, tmp_path / "a" / "b" / "c").fetch(name)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.parametrize("index", ["../../../../SUMS", "/tmp/SUMS", "a/../../../../SUMS"])
def test_an_index_name_outside_the_mirror_is_refused(tmp_path, index):
    files = {"SUMS": Behaviour(b"not an index\n"), "tmp/SUMS": Behaviour(b"not an index\n")}
    cache = tmp_path / "a" / "b" / "c"
    with HostileServer(files) as srv, pytest.raises(CubecastError) as err:
        mirror(srv, cache, index=index).list("*")
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and cache not in p.parents]
    assert "not a relative path inside its folder" in str(err.value)


@pytest.mark.parametrize(
    "names, message",
    [
        (["a", "a/b"], "listed as a file and as a folder"),
        (["x", "x.part"], r"ends in '\.part'"),
        (["d.part/x"], r"ends in '\.part'"),
    ],
)
def test_index_names_that_collide_in_the_cache_are_refused(tmp_path, names, message):
    data = {n: blob(100, i) for i, n in enumerate(names)}
    index = "".join(index_line(d, n, size=False) + "\n" for n, d in data.items())
    files = {n: Behaviour(d) for n, d in data.items()} | {"SHA256SUMS": Behaviour(index.encode())}
    with HostileServer(files) as srv:
        m = mirror(srv, tmp_path / "c")
        with pytest.raises(CubecastError, match=message):
            for n in names:
                m.fetch(n)


def test_an_index_that_is_not_text_is_refused_with_one_line(tmp_path):
    data = blob(10)
    raw = index_line(data, "f.bin").encode() + b"\n\xff\xfe garbage\n"
    with HostileServer({"f.bin": Behaviour(data), "SHA256SUMS": Behaviour(raw)}) as srv:
        with pytest.raises(SourceError, match=r"SHA256SUMS: not UTF-8 text"):
            mirror(srv, tmp_path / "c").fetch("f.bin")
