"""HTTP(S) downloads that survive real networks: retries with backoff, resume from a partial
file with Range requests, size and SHA-256 checks, a cache folder and a progress bar.

A file reaches its final name only when complete and verified; until then it lives as
``<name>.part`` next to it, which the next attempt (or the next run) resumes.

Every download is bounded (:class:`Limits`), because a mirror is someone else's server:

- **size**: the size the mirror's index declares, else the one the server declares
  (``Content-Length`` / ``Content-Range``), else ``cap`` (``CUBECAST_DOWNLOAD_CAP``, default
  16 GiB); a server declaring more than ``cap`` with no size in the index is refused before
  a byte is written. A body that runs past its bound is stopped and refused, and its partial
  file removed.
- **time**: one deadline per file, over all its attempts: ``floor`` seconds (default 60)
  plus the declared size at ``min_rate`` (``CUBECAST_DOWNLOAD_MIN_RATE``, default 100 kB/s);
  with no declared size the bytes received so far must keep that pace after the floor.
  ``CUBECAST_DOWNLOAD_DEADLINE`` (seconds) replaces the derived deadline with a fixed one.
  A server that trickles is refused when the deadline passes; the partial file is kept for
  the next run to resume.
- **disk**: a :class:`DiskBudget` (a ``max_disk`` for a folder: the cache, or the work
  folder holding it; ``CUBECAST_MAX_CACHE`` gives one for the cache) is checked before and
  while writing, and the file system keeps ``disk_reserve`` bytes free (default 256 MiB).
"""

from __future__ import annotations

import http.client
import logging
import math
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import requests
import requests.adapters
import urllib3
import urllib3.connection
from tqdm.auto import tqdm

from pipeline.codec.encoded import file_sha256
from pipeline.errors import CubecastError, SourceError

log = logging.getLogger(__name__)
_FATAL = {400, 401, 403, 404, 405, 410, 451}
CHUNK = 1 << 20
READ = 1 << 16  # bytes asked of the socket per read: a deadline is checked between reads

ENV_CAP = "CUBECAST_DOWNLOAD_CAP"
ENV_MIN_RATE = "CUBECAST_DOWNLOAD_MIN_RATE"
ENV_DEADLINE = "CUBECAST_DOWNLOAD_DEADLINE"
ENV_MAX_CACHE = "CUBECAST_MAX_CACHE"


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    timeout: float = 60.0

    def delay(self, attempt: int) -> float:
        return min(self.backoff * 2**attempt, self.max_backoff)


def env_size(name: str, default: int) -> int:
    from pipeline.publish.disk import parse_size

    text = os.environ.get(name)
    if not text:
        return default
    try:
        return parse_size(text.strip().removesuffix("/s"), name) or default
    except CubecastError as exc:
        raise SourceError(str(exc)) from None


def _env_seconds(name: str) -> float | None:
    text = os.environ.get(name)
    if not text:
        return None
    try:
        value = float(text.strip().removesuffix("s"))
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value <= 0:
        raise SourceError(f"{name} {text!r}: expected a positive number of seconds")
    return value


@dataclass(frozen=True)
class Limits:
    """How much and how long one file may take; see the module docstring."""

    cap: int = 16 << 30  # bytes, when neither the index nor the server declares a size
    min_rate: float = 100_000.0  # bytes/s that the deadline allows for after the floor
    floor: float = 60.0  # seconds every file gets whatever its size
    deadline: float | None = None  # fixed seconds per file, instead of floor + size/min_rate
    disk_reserve: int = 256 << 20  # bytes the cache's file system keeps free

    @classmethod
    def from_env(cls, **overrides: Any) -> Limits:
        """Defaults, then ``CUBECAST_DOWNLOAD_CAP`` / ``_MIN_RATE`` / ``_DEADLINE``, then
        ``overrides``."""
        base = cls()
        env = {
            "cap": env_size(ENV_CAP, base.cap),
            "min_rate": float(env_size(ENV_MIN_RATE, int(base.min_rate))),
            "deadline": _env_seconds(ENV_DEADLINE),
        }
        return replace(base, **{**env, **overrides})

    def allowed(self, declared: int | None, received: int) -> float:
        """Seconds a file may take: fixed, or the floor plus its size at ``min_rate`` (with
        no declared size, the bytes received so far)."""
        if self.deadline is not None:
            return self.deadline
        return self.floor + (declared if declared is not None else received) / self.min_rate


@dataclass(frozen=True)
class DiskBudget:
    """At most ``limit`` bytes on disk under ``root`` (a ``max_disk``): a download that would
    pass it is refused before it starts, or stopped, with its partial file removed."""

    root: Path
    limit: int

    def used(self) -> int:
        from pipeline.publish.disk import used_bytes

        return used_bytes(self.root) if self.root.exists() else 0

    def refuse(self, url: str, need: int) -> SourceError:
        return SourceError(
            f"{url}: {need:,} more bytes would take {self.root} past its disk budget of "
            f"{self.limit:,} bytes (max_disk); partial file removed"
        )


def cache_budget(root: str | os.PathLike[str]) -> DiskBudget | None:
    """``CUBECAST_MAX_CACHE`` (a size like ``20GB``) as a budget for the cache ``root``."""
    if not os.environ.get(ENV_MAX_CACHE):
        return None
    return DiskBudget(Path(root), env_size(ENV_MAX_CACHE, 0))


DEFAULT_HUB = "https://huggingface.co"


def hub_endpoint() -> str:
    """The hub the token belongs to: ``HF_ENDPOINT`` if set, else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_HUB).rstrip("/")


def _origin(url: str) -> tuple[str, str, int | None]:
    u = urlsplit(url)
    port = u.port or {"https": 443, "http": 80}.get(u.scheme)
    return u.scheme.lower(), (u.hostname or "").lower(), port


def token_allowed(url: str) -> bool:
    """Whether ``url`` is on the configured hub endpoint: same scheme, host and port.

    The default endpoint is https, so the token never travels in clear text unless the user
    configured a plain-http endpoint themselves (a local hub, as the tests do).
    """
    try:
        return _origin(url) == _origin(hub_endpoint())
    except ValueError:  # a malformed port: not the hub
        return False


def auth_headers(url: str) -> dict[str, str]:
    """The HuggingFace token for URLs on the configured hub endpoint only; never logged."""
    token = os.environ.get("HF_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token and token_allowed(url) else {}


def network_errors() -> tuple[type[BaseException], ...]:
    """Transport errors of the HTTP clients in play (requests here, httpx in
    huggingface_hub): what an unreachable host or a dropped connection raises."""
    errors: list[type[BaseException]] = [
        ConnectionError,
        TimeoutError,
        requests.ConnectionError,
        requests.Timeout,
    ]
    for module in ("httpx", "httpx2"):  # huggingface_hub 1.x uses httpx, 2.x httpx2
        try:
            errors.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


# what reading a response body can raise besides our own errors: all worth a retry
TRANSPORT = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)


def int_header(r: requests.Response, name: str) -> int | None:
    try:
        value = int(r.headers.get(name, ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def content_range(r: requests.Response) -> tuple[int, int, int | None] | None:
    """``Content-Range: bytes a-b/n`` as (a, b + 1, n or None), or None if absent/garbled."""
    rng = (r.headers.get("Content-Range") or "").strip()
    try:
        unit, spec = rng.split(" ", 1)
        span, total = spec.split("/", 1)
        a, b = (int(x) for x in span.split("-", 1))
        n = None if total.strip() == "*" else int(total)
    except ValueError:
        return None
    if unit.lower() != "bytes" or a < 0 or b < a or (n is not None and n <= b):
        return None
    return a, b + 1, n


def _total_size(r: requests.Response, offset: int) -> int | None:
    if r.status_code == 206:
        cr = content_range(r)
        if cr is not None and cr[2] is not None:
            return cr[2]
    length = int_header(r, "Content-Length")
    return length + (offset if r.status_code == 206 else 0) if length is not None else None


class DeadlineError(SourceError):
    """A download did not complete in time; its partial file is kept for the next run."""


class Deadline:
    """One file's clock: ``started`` when its download began, ``limits`` say how long."""

    def __init__(self, url: str, limits: Limits) -> None:
        self.url, self.limits = url, limits
        self.started = time.monotonic()
        self.declared: int | None = None
        self.received = 0

    def left(self) -> float:
        allowed = self.limits.allowed(self.declared, self.received)
        return allowed - (time.monotonic() - self.started)

    def error(self) -> DeadlineError:
        allowed = self.limits.allowed(self.declared, self.received)
        return DeadlineError(
            f"{self.url}: not complete after {time.monotonic() - self.started:.1f} s, past "
            f"its {allowed:.1f} s deadline ({self.received:,} bytes received; "
            f"{ENV_DEADLINE} / {ENV_MIN_RATE} set it)"
        )

    def check(self) -> float:
        left = self.left()
        if left <= 0:
            raise self.error()
        return left


def _set_read_timeout(r: requests.Response, seconds: float) -> None:
    """Shorten the socket timeout of a streaming response so that one read cannot outlive
    the deadline (best effort: the socket sits inside urllib3)."""
    sock = getattr(getattr(r.raw, "connection", None), "sock", None)
    if isinstance(sock, socket.socket):
        try:
            sock.settimeout(max(seconds, 0.01))
        except OSError:
            pass


_watched = threading.local()  # sockets of this thread's requests under a watchdog


def _register(sock: socket.socket | None) -> None:
    socks = getattr(_watched, "socks", None)
    if socks is not None and sock is not None:
        socks.append(sock)


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    def getresponse(self, *a: Any, **k: Any) -> Any:
        _register(self.sock)
        return super().getresponse(*a, **k)


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def getresponse(self, *a: Any, **k: Any) -> Any:
        _register(self.sock)
        return super().getresponse(*a, **k)


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *a: Any, **k: Any) -> None:
        super().init_poolmanager(*a, **k)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPPool,
            "https": _WatchedHTTPSPool,
        }


def watched_session() -> requests.Session:
    """A session whose connections :func:`watchdog` can cut: a server that trickles its
    headers (no read ever times out) still meets the deadline."""
    session = requests.Session()
    adapter = _WatchedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


@contextmanager
def watchdog(clock: Deadline) -> Iterator[None]:
    """Shut down the sockets of the requests this thread makes inside the block once
    ``clock``'s deadline passes (re-armed while a pace-based deadline moves on)."""
    socks: list[socket.socket] = []
    done = threading.Event()

    def fire() -> None:
        while not done.wait(max(clock.left(), 0.0)):
            if clock.left() <= 0:
                for sock in socks:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return

    outer = getattr(_watched, "socks", None)
    _watched.socks = socks
    timer = threading.Thread(target=fire, daemon=True)
    timer.start()
    try:
        yield
    finally:
        done.set()
        _watched.socks = outer


def read_body(
    r: requests.Response,
    out: BinaryIO,
    *,
    bound: int,
    over: Any,
    clock: Deadline,
    timeout: float,
    on_block: Any = None,
) -> int:
    """Copy ``r``'s body to ``out`` a socket read at a time; ``over(n)`` makes the error
    raised once more than ``bound`` bytes arrive, ``clock`` the one raised when the deadline
    passes. Returns the bytes written."""
    written = 0
    while True:
        left = clock.check()
        _set_read_timeout(r, min(timeout, left))
        try:
            block = r.raw.read1(READ)
        except TRANSPORT:
            if clock.left() <= 0:
                raise clock.error() from None
            raise
        if not block:
            clock.check()  # a cut by the watchdog reads as the end of the body
            return written
        if written + len(block) > bound:
            raise over(written + len(block))
        try:
            out.write(block)
        except OSError as exc:  # a full disk is not worth a retry
            raise SourceError(f"{clock.url}: cannot write the download ({exc})") from exc
        written += len(block)
        clock.received += len(block)
        if on_block is not None:
            on_block(len(block))


def _request_timeout(policy: RetryPolicy, clock: Deadline) -> float:
    return max(min(policy.timeout, clock.check()), 0.01)


class _Writer:
    """The checks made while bytes land in a ``.part`` file: disk budget and free space."""

    EVERY = 8 << 20  # bytes between looks at the disk

    def __init__(self, url: str, part: Path, budget: DiskBudget | None, limits: Limits) -> None:
        self.url, self.part, self.budget, self.limits = url, part, budget, limits
        self.since = 0
        self.base = budget.used() if budget else 0

    def check_ahead(self, need: int) -> None:
        if self.budget is not None and self.base + need > self.budget.limit:
            raise self.budget.refuse(self.url, need)
        self._free(need)

    def _free(self, need: int) -> None:
        try:
            free = shutil.disk_usage(self.part.parent).free
        except OSError:
            return
        if free - min(need, self.EVERY) < self.limits.disk_reserve:
            raise SourceError(
                f"{self.url}: the file system of {self.part.parent} has {free:,} bytes free, "
                f"under the {self.limits.disk_reserve:,} kept in reserve; partial file removed"
            )

    def __call__(self, n: int) -> None:
        self.base += n
        self.since += n
        if self.budget is not None and self.base > self.budget.limit:
            raise self.budget.refuse(self.url, n)
        if self.since >= self.EVERY:
            self.since = 0
            self.base = self.budget.used() if self.budget else 0
            if self.budget is not None and self.base > self.budget.limit:
                raise self.budget.refuse(self.url, n)
            self._free(0)


def _refuse_and_remove(part: Path, exc: SourceError) -> SourceError:
    part.unlink(missing_ok=True)
    return exc


def _fetch_once(
    url: str,
    part: Path,
    session: requests.Session,
    policy: RetryPolicy,
    progress: bool,
    *,
    size: int | None = None,
    limits: Limits | None = None,
    clock: Deadline | None = None,
    budget: DiskBudget | None = None,
) -> int | None:
    """One attempt: append to ``part`` from where it ends; returns the total size if known."""
    limits = limits or Limits.from_env()
    clock = clock or Deadline(url, limits)
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:  # a stale part from another version of the file
        part.unlink()
        offset = 0
    headers = {
        "Accept-Encoding": "identity",
        **auth_headers(url),
        **({"Range": f"bytes={offset}-"} if offset else {}),
    }
    timeout = _request_timeout(policy, clock)
    with (
        watchdog(clock),
        session.get(url, headers=headers, stream=True, timeout=timeout) as r,
    ):
        clock.check()
        if r.status_code == 416 and offset:  # nothing left to fetch: the part is complete
            if size is not None and offset != size:
                raise _refuse_and_remove(
                    part,
                    SourceError(
                        f"{url}: the server ends before the {size:,} bytes the "
                        f"index declares (HTTP 416 at {offset:,})"
                    ),
                )
            return offset
        if r.status_code in _FATAL:
            raise SourceError(f"{url}: HTTP {r.status_code} {r.reason or ''}".rstrip())
        r.raise_for_status()
        if r.status_code not in (200, 206):
            raise SourceError(f"{url}: HTTP {r.status_code} is not a file's content")
        if offset and r.status_code == 200:  # server ignored Range: start over
            offset = 0
        if r.status_code == 206:
            cr = content_range(r)
            if cr is None or cr[0] != offset:
                got = r.headers.get("Content-Range")
                raise SourceError(
                    f"{url}: asked for bytes {offset}- and the server sent range {got!r}"
                )
        total = _total_size(r, offset)
        if size is not None and total is not None and total != size:
            raise SourceError(f"{url}: the server declares {total:,} bytes, the index {size:,}")
        if size is None and total is not None and total > limits.cap:
            raise SourceError(
                f"{url}: the server declares {total:,} bytes, over the {limits.cap:,} byte "
                f"cap for a file whose size the index does not give ({ENV_CAP})"
            )
        bound = size if size is not None else total if total is not None else limits.cap
        declared_by = (
            "the index declares"
            if size is not None
            else "the server declares"
            if total is not None
            else f"the cap allows ({ENV_CAP})"
        )
        clock.declared = size if size is not None else total
        writer = _Writer(url, part, budget, limits)
        try:
            writer.check_ahead(bound - offset if clock.declared is not None else 0)
        except SourceError as exc:
            raise _refuse_and_remove(part, exc) from None

        def over(n: int) -> SourceError:
            return _refuse_and_remove(
                part,
                SourceError(
                    f"{url}: the server sent more than the {bound:,} bytes {declared_by}; "
                    "stopped, partial file removed"
                ),
            )

        try:
            f = open(part, "ab" if offset else "wb")  # noqa: SIM115  (closed below)
        except OSError as exc:
            raise SourceError(f"{part}: cannot write the download ({exc})") from exc
        with (
            f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=Path(url).name[:40],
                disable=not progress,
                leave=False,
            ) as bar,
        ):

            def step(n: int) -> None:
                bar.update(n)
                try:
                    writer(n)
                except SourceError as exc:
                    raise _refuse_and_remove(part, exc) from None

            read_body(
                r,
                f,
                bound=bound - offset,
                over=over,
                clock=clock,
                timeout=policy.timeout,
                on_block=step,
            )
        return total


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    size: int | None = None,
    policy: RetryPolicy = RetryPolicy(),
    session: requests.Session | None = None,
    progress: bool = True,
    limits: Limits | None = None,
    budget: DiskBudget | None = None,
) -> Path:
    """Fetch ``url`` to ``dest`` unless a verified copy is already there.

    ``size`` (from the mirror's index) bounds the body; ``limits`` (default
    :meth:`Limits.from_env`) bound what is undeclared and the time taken; ``budget`` is the
    disk budget (``max_disk``) of the folder the cache lives in. Every failure is a
    :class:`SourceError` naming ``url``.
    """
    dest = Path(dest)
    limits = limits or Limits.from_env()
    try:
        if dest.is_file() and (sha256 is None or file_sha256(dest) == sha256):
            if size is None or dest.stat().st_size == size:
                return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_dir():
            raise SourceError(f"{url}: {dest} is a folder in the cache, not a file")
    except OSError as exc:
        raise SourceError(f"{url}: cannot place the download at {dest} ({exc})") from exc
    part = dest.with_name(dest.name + ".part")
    session = session or watched_session()
    clock = Deadline(url, limits)
    last: BaseException | None = None
    for attempt in range(policy.retries + 1):
        try:
            total = _fetch_once(
                url,
                part,
                session,
                policy,
                progress,
                size=size,
                limits=limits,
                clock=clock,
                budget=budget,
            )
            got = part.stat().st_size
            expected = size if size is not None else total
            if expected is not None and got < expected:
                raise requests.ConnectionError(f"connection closed at {got} of {expected} bytes")
            if expected is not None and got > expected:
                part.unlink()
                raise SourceError(f"{url}: got {got} bytes, expected {expected}")
            if sha256 is not None and file_sha256(part) != sha256:
                part.unlink()
                raise SourceError(f"{url}: SHA-256 mismatch (corrupt download or stale index)")
            try:
                os.replace(part, dest)
            except OSError as exc:
                raise SourceError(f"{url}: cannot move the download to {dest} ({exc})") from exc
            return dest
        except DeadlineError as exc:
            kept = "; partial file kept for the next run" if part.exists() else ""
            raise DeadlineError(f"{exc}{kept}") from None
        except SourceError:
            part.unlink(missing_ok=True)  # refused: nothing of it is kept
            raise
        except TRANSPORT as exc:
            last = exc
            if clock.left() <= 0:
                kept = "; partial file kept for the next run" if part.exists() else ""
                raise DeadlineError(f"{clock.error()}{kept}") from None
            if attempt < policy.retries:
                wait = min(policy.delay(attempt), max(clock.left(), 0.0))
                log.warning("%s: %s; retrying in %.1f s", url, exc.__class__.__name__, wait)
                time.sleep(wait)
    detail = " ".join(str(last).split())[:200]
    raise SourceError(
        f"{url}: unreachable after {policy.retries + 1} attempts ({last.__class__.__name__}: "
        f"{detail})"
    )
