"""Fuzz the download layer with hostile HTTP mirrors on 127.0.0.1 and count what happens.

Each case starts a :class:`HostileServer` whose files misbehave in one way, drawn at random
from the seed (sizes, positions, rates): endless bodies (chunked or close-delimited), lying
``Content-Length``, trickled bodies and headers, servers that ignore Range or answer the
wrong range, corrupted bytes with a matching or a stale SHA-256, dropped connections, and
indexes with bad lines or names that climb out of the cache. The client side is what users
run: :class:`~pipeline.sources.mirror.HttpMirror` and
:class:`~pipeline.taco.http.HttpRangeFile`, with short limits so a case takes seconds.
Outcomes:

- ``ok``: the expected bytes came back (a case that should succeed)
- ``refused``: a one-line CubecastError, where one is expected, with no partial file left
  and the bytes taken from the server within bounds
- ``crash``: any other exception
- ``hang``: no answer within the case's time limit
- ``wrong``: anything else: wrong bytes, an accepted hostile file, a refusal of a good one,
  a multi-line message, a leftover ``.part`` file, too many bytes pulled, a file outside
  the cache

Usage: ``python bench/fuzz_mirrors.py --seed 0 --cases 60`` (writes
``bench/results/fuzz_mirrors_seed<seed>_n<cases>.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OUTCOMES = ("ok", "refused", "crash", "hang", "wrong")


# -- the hostile server ----------------------------------------------------------------------
@dataclass
class Behaviour:
    """How the server answers one path. Every behaviour ends by itself: at most ``limit``
    body bytes per response, trickles are finite."""

    body: bytes = b""
    endless: bool = False  # after ``body``, filler bytes up to ``limit``
    limit: int = 32 << 20
    length: int | str | None = "auto"  # Content-Length: "auto" (true), None (omit), a lie
    chunked: bool = False  # Transfer-Encoding: chunked (no Content-Length)
    ranges: bool = True  # honour Range (206) or ignore it (200 with the whole body)
    trickle: float = 0.0  # seconds between single body bytes ...
    trickle_after: int = 0  # ... once this many bytes went out at full speed
    head_trickle: float = 0.0  # seconds between header bytes
    status: int = 200
    content_range: str | None = None  # a forced Content-Range on 206 answers
    cut_at: int | None = None  # close the connection after this many body bytes
    cut_times: int = 1 << 30  # ... on this many responses only


class HostileServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 serving ``files`` (relative path ->
    :class:`Behaviour`); ``served`` counts the body bytes sent per path."""

    def __init__(self, files: dict[str, Behaviour] | None = None) -> None:
        self.files: dict[str, Behaviour] = dict(files or {})
        self.served: dict[str, int] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(head=True)

            def do_GET(self) -> None:
                self._answer(head=False)

            def _answer(self, head: bool) -> None:
                path = unquote(self.path.split("?")[0])
                b = server.files.get(path.lstrip("/"))
                rng = self.headers.get("Range")
                with server.lock:
                    server.requests.append(("HEAD" if head else "GET", path, rng))
                if b is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if b.head_trickle:
                    self._trickle_headers(b)
                    return
                body, status, crange = b.body, b.status, None
                m = re.match(r"bytes=(\d+)-(\d*)", rng or "")
                if m and b.ranges and not head and status == 200 and not b.endless:
                    start = int(m[1])
                    end = min(int(m[2]) + 1, len(body)) if m[2] else len(body)
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    body, status = body[start:end], 206
                    crange = b.content_range or f"bytes {start}-{end - 1}/{len(b.body)}"
                total = b.limit if b.endless else len(body)
                self.send_response(status)
                if crange:
                    self.send_header("Content-Range", crange)
                if b.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                elif b.length == "auto" and not b.endless:
                    self.send_header("Content-Length", str(len(body)))
                elif b.length is not None and b.length != "auto":
                    self.send_header("Content-Length", str(b.length))
                else:
                    self.send_header("Connection", "close")
                self.end_headers()
                if not head:
                    self._send_body(path, b, body, total)
                if b.length != "auto" or b.endless or b.cut_at is not None:
                    self.close_connection = True

            def _trickle_headers(self, b: Behaviour) -> None:
                head = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 400
                for i in range(len(head)):
                    if server.stopping.is_set():
                        break
                    try:
                        self.wfile.write(head[i : i + 1])
                        self.wfile.flush()
                    except OSError:
                        break
                    time.sleep(b.head_trickle)
                self.close_connection = True

            def _send_body(self, path: str, b: Behaviour, body: bytes, total: int) -> None:
                sent = 0
                filler = bytes(range(256)) * 256
                cut = None
                if b.cut_at is not None and b.cut_times > 0:
                    b.cut_times -= 1
                    cut = b.cut_at
                try:
                    while sent < total and not server.stopping.is_set():
                        if cut is not None and sent >= cut:
                            return
                        if sent < len(body):
                            chunk = body[sent : sent + 65536]
                        else:
                            chunk = filler[: total - sent]
                        slow = b.trickle and sent >= b.trickle_after
                        if slow:
                            chunk = chunk[:1]
                        elif b.trickle:
                            chunk = chunk[: b.trickle_after - sent]
                        if cut is not None:
                            chunk = chunk[: cut - sent]
                        if b.chunked:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        else:
                            self.wfile.write(chunk)
                        self.wfile.flush()
                        sent += len(chunk)
                        with server.lock:
                            server.served[path] = server.served.get(path, 0) + len(chunk)
                        if slow:
                            time.sleep(b.trickle)
                    if b.chunked and not b.endless:
                        self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients that hang up on a hostile server are the point

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def bytes_served(self, rel: str) -> int:
        with self.lock:
            return self.served.get("/" + rel, 0)

    def gets(self, rel: str) -> list[str | None]:
        """The Range header of each GET of ``rel`` (None: no Range)."""
        with self.lock:
            return [r for m, p, r in self.requests if m == "GET" and p == "/" + rel]

    def __enter__(self) -> HostileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def index_line(data: bytes, rel: str, size: bool | int = True) -> str:
    """One ``SHA256SUMS`` line; ``size`` True: the true size, an int: that size, False: none."""
    n = len(data) if size is True else size
    return f"{sha(data)}  {n}  {rel}" if size is not False else f"{sha(data)}  {rel}"


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


# -- the cases -------------------------------------------------------------------------------
@dataclass
class Case:
    """One hostile mirror and what the client must do with it: ``expect`` is "ok" (return
    ``truth``) or "refused"; ``bound`` caps the bytes the client may pull from the server."""

    name: str
    files: dict[str, Behaviour]
    run: Callable[[HostileServer, Path], Any]
    expect: str
    truth: bytes | None = None
    bound: int | None = None
    watch: str = "f.bin"  # the path whose served bytes ``bound`` caps
    limit_s: float = 20.0


def _limits(**k: Any) -> Any:
    from pipeline.sources.limits import Limits

    base = {"floor": 2.0, "min_rate": 2e6, "cap": 4 << 20, "disk_reserve": 0}
    return Limits(**{**base, **k})


def _policy() -> Any:
    from pipeline.sources.download import RetryPolicy

    return RetryPolicy(retries=2, backoff=0.01, timeout=2.0)


def _mirror_fetch(rel: str = "f.bin", index: str = "SHA256SUMS", **limits: Any) -> Callable:
    def run(srv: HostileServer, cache: Path) -> bytes:
        from pipeline.sources.mirror import HttpMirror

        m = HttpMirror(
            srv.url, cache, index=index, policy=_policy(), progress=False, limits=_limits(**limits)
        )
        return m.fetch(rel).read_bytes()

    return run


def _range_read(spans: list[tuple[int, int]], **kw: Any) -> Callable:
    def run(srv: HostileServer, cache: Path) -> bytes:
        from pipeline.taco.http import HttpRangeFile

        opts = {k: v for k, v in kw.items() if k != "limits"}
        f = HttpRangeFile(f"{srv.url}/f.bin", limits=_limits(**kw.get("limits", {})), **opts)
        try:
            out = b""
            for a, n in spans:
                f.seek(a)
                out += f.read(n)
            return out
        finally:
            f.close()

    return run


def _zip_read(srv: HostileServer, cache: Path) -> bytes:
    from pipeline.taco.http import HttpRangeFile

    with HttpRangeFile(f"{srv.url}/f.bin", limits=_limits()) as f, zipfile.ZipFile(f) as z:
        return b"".join(z.read(n) for n in sorted(z.namelist()))


def make_cases(seed: int, n: int) -> list[Case]:
    rng = random.Random(seed)

    def blob(lo: int = 1, hi: int = 400_000) -> bytes:
        return rng.randbytes(rng.randint(lo, hi))

    def with_index(data: bytes, b: Behaviour, size: bool | int = True) -> dict[str, Behaviour]:
        return {"f.bin": b, "SHA256SUMS": Behaviour(index_line(data, "f.bin", size).encode())}

    kinds: list[Callable[[], Case]] = []

    def endless() -> Case:
        data = blob()
        declared = rng.choice([True, False])
        chunked = rng.choice([True, False])
        b = Behaviour(body=data, endless=True, chunked=chunked, limit=16 << 20)
        bound = (len(data) if declared else 4 << 20) + (8 << 20)  # + socket buffers
        how = f"{'chunked' if chunked else 'close'},{'sized' if declared else 'capped'}"
        return Case(
            f"endless[{how}]",
            with_index(data, b, declared),
            _mirror_fetch(),
            "refused",
            bound=bound,
        )

    def lying_length() -> Case:
        data = blob(1000)
        mode = rng.choice(["short", "long", "huge", "short-sized", "long-sized"])
        sized = mode.endswith("sized") or mode == "huge" and rng.random() < 0.5
        lie = {
            "short": rng.randint(1, len(data) - 1),
            "long": len(data) + rng.randint(1, 1 << 20),
            "huge": 10**12,
        }[mode.removesuffix("-sized")]
        b = Behaviour(body=data, length=lie)
        if mode == "long":  # only the header lies; the resume finds the file complete
            return Case(
                "lying_length[long]",
                with_index(data, b, False),
                _mirror_fetch(),
                "ok",
                truth=data,
                bound=len(data) * 4,
            )
        return Case(
            f"lying_length[{mode}]",
            with_index(data, b, sized),
            _mirror_fetch(),
            "refused",
            bound=len(data) * 4 + (8 << 20),
        )

    def index_size_lies() -> Case:
        data = blob(1000)
        wrong = rng.choice([len(data) - rng.randint(1, 999), len(data) + rng.randint(1, 10**6)])
        b = Behaviour(body=data, length=rng.choice(["auto", None]))
        return Case(
            f"index_size_lies[{'less' if wrong < len(data) else 'more'}]",
            with_index(data, b, wrong),
            _mirror_fetch(),
            "refused",
            bound=len(data) + (8 << 20),
        )

    def trickle() -> Case:
        data = blob(2000, 200_000)
        at = rng.randint(0, len(data) - 1000)
        b = Behaviour(body=data, trickle=rng.choice([0.05, 0.3, 1.5]), trickle_after=at)
        return Case(
            f"trickle[at {at * 100 // len(data)}%]",
            with_index(data, b, rng.choice([True, False])),
            _mirror_fetch(deadline=1.5),
            "refused",
            limit_s=10,
        )

    def trickle_pace() -> Case:  # no fixed deadline: the pace rule after the floor
        data = blob(200_000, 400_000)
        b = Behaviour(body=data, trickle=0.02, trickle_after=rng.randint(0, 100_000))
        return Case(
            "trickle[pace]",
            with_index(data, b, rng.choice([True, False])),
            _mirror_fetch(floor=1.0, min_rate=1e6),
            "refused",
            limit_s=10,
        )

    def trickle_headers() -> Case:
        data = blob()
        b = Behaviour(body=data, head_trickle=rng.choice([0.02, 0.1]))
        return Case(
            "trickle_headers",
            with_index(data, b),
            _mirror_fetch(deadline=1.5),
            "refused",
            limit_s=10,
        )

    def corrupt() -> Case:
        data = bytearray(blob(100))
        good = bytes(data)
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        stale = rng.choice([True, False])  # index made from the good bytes: refused
        idx = index_line(good if stale else bytes(data), "f.bin", rng.choice([True, False]))
        files = {"f.bin": Behaviour(body=bytes(data)), "SHA256SUMS": Behaviour(idx.encode())}
        same = bytes(data) == good
        return Case(
            f"corrupt[{'stale sha' if stale else 'matching sha'}]",
            files,
            _mirror_fetch(),
            "ok" if same or not stale else "refused",
            truth=bytes(data),
        )

    def dropped() -> Case:
        data = blob(10_000)
        b = Behaviour(body=data, cut_at=rng.randint(1, len(data) - 1), cut_times=rng.randint(1, 2))
        return Case(
            "dropped_connection",
            with_index(data, b, rng.choice([True, False])),
            _mirror_fetch(),
            "ok",
            truth=data,
        )

    def honest() -> Case:
        data = blob(0)
        b = Behaviour(body=data, chunked=rng.choice([True, False]))
        return Case(
            "honest",
            with_index(data, b, rng.choice([True, False])),
            _mirror_fetch(),
            "ok",
            truth=data,
        )

    def wrong_range() -> Case:  # a resume answered with another range
        data = blob(10_000)
        b = Behaviour(
            body=data,
            cut_at=rng.randint(1, len(data) - 1),
            cut_times=1,
            content_range=f"bytes 0-{len(data) - 1}/{len(data)}",
        )
        return Case(
            "wrong_range_on_resume",
            with_index(data, b),
            _mirror_fetch(),
            "refused",
            bound=4 * len(data),
        )

    def bad_index() -> Case:
        data = blob(1, 1000)
        h = sha(data)
        line = rng.choice(
            [
                f"{h}  ../f.bin",
                f"{h}  ../../etc/passwd",
                f"{h}  /etc/passwd",
                f"{h}  a/../../x",
                f"{h}  C:/x",
                f"{h}  a\\..\\x",
                f"{h[:-1]}  f.bin",
                f"{h}",
                f"{h}  -5  f.bin",
                f"{h}  f.bin\x00x",
                f"zz{h[2:]}  f.bin",
                f"{h}  f.bin.part",
                f"{h}  a/x.part/y",
                f"{h}  f.bin\n{h}  f.bin/x",
                f"{h}  f.bin\n{sha(b'')}  f.bin",
                f"{h}  f.bin\n" + "\xff" * 3,
            ]
        )
        raw = (
            line.encode("utf-8", "surrogateescape")
            if "\xff" not in line
            else (line.replace("\xff", "").encode() + b"\xff\xfe\xff")
        )
        files = {"f.bin": Behaviour(body=data), "SHA256SUMS": Behaviour(raw)}
        rel = "f.bin" if "f.bin" in line and "/f.bin" not in line else line.split()[-1]
        return Case(f"bad_index[{line[66:][:24]!r}]", files, _mirror_fetch(rel=rel), "refused")

    def bad_index_name() -> Case:  # the recipe's index name climbs out of the cache
        data = blob(1, 1000)
        name = rng.choice(["../../../../SUMS", "/tmp/SUMS", "a/../../../SUMS"])
        files = {"f.bin": Behaviour(body=data), "SUMS": Behaviour(b"not an index\n")}
        return Case(f"bad_index_name[{name}]", files, _mirror_fetch(index=name), "refused")

    def endless_index() -> Case:
        b = Behaviour(body=b"", endless=True, chunked=rng.choice([True, False]), limit=32 << 20)
        return Case(
            "endless_index",
            {"SHA256SUMS": b},
            _mirror_fetch(cap=1 << 20),
            "refused",
            bound=(1 << 20) + (8 << 20),
            watch="SHA256SUMS",
        )

    def range_ignored() -> Case:
        members = {f"m{i}": rng.randbytes(rng.randint(0, 60_000)) for i in range(rng.randint(1, 8))}
        data = zip_bytes(members)
        b = Behaviour(body=data, ranges=False)
        return Case(
            "range_ignored[zip]",
            {"f.bin": b},
            _zip_read,
            "ok",
            truth=b"".join(members[k] for k in sorted(members)),
            bound=len(data) + 1,
        )

    def range_ignored_big() -> Case:
        data = blob(200_000)
        b = Behaviour(body=data, ranges=False)
        return Case(
            "range_ignored[over cap]",
            {"f.bin": b},
            _range_read([(0, 100)], fallback_max=100_000),
            "refused",
            bound=len(data) + (8 << 20),
        )

    def range_reads() -> Case:
        data = blob(1000)
        spans = [(rng.randrange(len(data)), rng.randint(0, 5000)) for _ in range(5)]
        truth = b"".join(data[a : a + k] for a, k in spans)
        b = Behaviour(body=data, ranges=rng.random() < 0.7)
        return Case(
            f"range_reads[{'honoured' if b.ranges else 'ignored'}]",
            {"f.bin": b},
            _range_read(spans),
            "ok",
            truth=truth,
            bound=len(data) * (1 if not b.ranges else 5) + 1,
        )

    def range_overlong() -> Case:  # 206 with more bytes than asked
        data = blob(10_000)
        b = Behaviour(body=data, content_range=f"bytes 0-{len(data) - 1}/{len(data)}")
        return Case(
            "range_overlong",
            {"f.bin": b},
            _range_read([(100, 10)]),
            "refused",
            bound=len(data) + (8 << 20),
        )

    def range_trickle() -> Case:
        data = blob(1000)
        b = Behaviour(body=data, trickle=0.2, ranges=rng.random() < 0.5)
        return Case(
            "range_trickle",
            {"f.bin": b},
            _range_read([(0, 500)], limits={"deadline": 1.5}),
            "refused",
            limit_s=10,
        )

    kinds = [
        endless,
        lying_length,
        index_size_lies,
        trickle,
        trickle_pace,
        trickle_headers,
        corrupt,
        dropped,
        honest,
        wrong_range,
        bad_index,
        bad_index_name,
        endless_index,
        range_ignored,
        range_ignored_big,
        range_reads,
        range_overlong,
        range_trickle,
    ]
    return [kinds[i % len(kinds)]() if i < len(kinds) else rng.choice(kinds)() for i in range(n)]


def _judge(
    case: Case,
    srv: HostileServer,
    work: Path,
    cache: Path,
    result: Any,
    error: BaseException | None,
) -> tuple[str, str]:
    from pipeline.errors import CubecastError

    outside = [p for p in work.rglob("*") if p.is_file() and cache not in p.parents]
    leftovers = [p.name for p in cache.rglob("*.part")] if cache.exists() else []
    pulled = srv.bytes_served(case.watch)
    if outside:
        return "wrong", f"wrote outside the cache: {outside[0].relative_to(work)}"
    if case.bound is not None and pulled > case.bound:
        return "wrong", f"pulled {pulled:,} bytes from the server, bound {case.bound:,}"
    if error is not None and not isinstance(error, CubecastError):
        return "crash", f"{type(error).__name__}: {str(error)[:200]}"
    if error is not None:
        msg = str(error)
        if "\n" in msg or not msg.strip():
            return "wrong", f"message not one line: {msg[:200]!r}"
        if case.expect == "ok":
            return "wrong", f"refused a good file: {msg[:200]}"
        if leftovers and "deadline" not in msg:
            return "wrong", f"partial file left: {leftovers[0]} ({msg[:120]})"
        return "refused", msg[:240]
    if case.expect == "refused":
        return "wrong", f"accepted: {len(result or b''):,} bytes"
    if result != case.truth:
        return (
            "wrong",
            f"{len(result or b''):,} bytes differ from the {len(case.truth or b''):,} served",
        )
    return "ok", f"{len(result):,} bytes, {pulled:,} pulled"


def run_case(case: Case) -> tuple[str, str, str]:
    """Run one case with its time limit; returns (name, outcome, detail)."""
    work = Path(tempfile.mkdtemp(prefix="fuzz_mirror_"))
    cache = work / "a" / "b" / "cache"
    box: dict[str, Any] = {}
    try:
        with HostileServer(case.files) as srv:

            def target() -> None:
                try:
                    box["result"] = case.run(srv, cache)
                except BaseException as exc:  # noqa: BLE001  (judged below)
                    box["error"] = exc

            t = threading.Thread(target=target, daemon=True)
            start = time.monotonic()
            t.start()
            t.join(case.limit_s)
            took = time.monotonic() - start
            if t.is_alive():
                return case.name, "hang", f"no answer after {case.limit_s:.0f} s"
            outcome, detail = _judge(case, srv, work, cache, box.get("result"), box.get("error"))
            return case.name, outcome, f"{detail} [{took:.1f} s]"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_mirror_cases(seed: int, n: int) -> list[tuple[str, str, str]]:
    """``n`` randomized hostile-mirror cases from ``seed``: (case name, outcome, detail),
    outcome in ``ok``, ``refused``, ``crash``, ``hang``, ``wrong``."""
    import logging

    logging.getLogger("pipeline").setLevel(logging.ERROR)
    return [run_case(c) for c in make_cases(seed, n)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", type=int, default=60)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = p.parse_args(argv)
    start = time.monotonic()
    rows = run_mirror_cases(a.seed, a.cases)
    seconds = time.monotonic() - start
    width = max(len(r[0]) for r in rows)
    for name, outcome, detail in rows:
        print(f"{name:<{width}}  {outcome:<8}  {detail[:110]}")
    counts = Counter(o for _, o, _ in rows)
    print("\n" + "  ".join(f"{o}: {counts.get(o, 0)}" for o in OUTCOMES) + f"  ({seconds:.0f} s)")
    a.out.mkdir(parents=True, exist_ok=True)
    out = a.out / f"fuzz_mirrors_seed{a.seed}_n{a.cases}.json"
    out.write_text(
        json.dumps(
            {
                "seed": a.seed,
                "cases": a.cases,
                "seconds": round(seconds, 1),
                "counts": {o: counts.get(o, 0) for o in OUTCOMES},
                "rows": [{"case": c, "outcome": o, "detail": d} for c, o, d in rows],
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    bad = sum(counts.get(o, 0) for o in ("crash", "hang", "wrong"))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
