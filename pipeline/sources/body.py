"""Reading an HTTP response: the sizes its headers declare, its body copied within a bound
and a deadline, and the transport errors doing so can raise."""

from __future__ import annotations

import http.client
import socket
from typing import Any, BinaryIO

import requests
import urllib3

from pipeline.errors import SourceError
from pipeline.sources.limits import Deadline

READ = 1 << 16  # bytes asked of the socket per read: a deadline is checked between reads

# what reading a response body can raise besides our own errors: all worth a retry
TRANSPORT = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)


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


def total_size(r: requests.Response, offset: int) -> int | None:
    """The whole file's size as the answer to a request from ``offset`` declares it."""
    if r.status_code == 206:
        cr = content_range(r)
        if cr is not None and cr[2] is not None:
            return cr[2]
    length = int_header(r, "Content-Length")
    return length + (offset if r.status_code == 206 else 0) if length is not None else None


def _set_read_timeout(r: requests.Response, seconds: float) -> None:
    """Shorten the socket timeout of a streaming response so that one read cannot outlive
    the deadline (best effort: the socket sits inside urllib3)."""
    sock = getattr(getattr(r.raw, "connection", None), "sock", None)
    if isinstance(sock, socket.socket):
        try:
            sock.settimeout(max(seconds, 0.01))
        except OSError:
            pass


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
