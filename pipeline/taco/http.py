"""A remote shard as a seekable file: HTTP(S) Range requests, each bounded in size and time."""

from __future__ import annotations

import io
import logging
import tempfile
from typing import Any

import requests

from pipeline.errors import SourceError
from pipeline.sources.body import TRANSPORT, content_range, int_header, read_body
from pipeline.sources.limits import Deadline, Limits, env_size
from pipeline.sources.watchdog import watchdog, watched_session
from pipeline.taco.rangefile import RangeFile

log = logging.getLogger(__name__)


class HttpRangeFile(RangeFile):
    """Seekable read-only file over HTTP Range requests; ``ranges`` records what was fetched.

    Each read asks for its bytes only and reads at most that many (a longer answer is
    refused), within a deadline of ``limits`` (:class:`~pipeline.sources.limits.Limits`:
    its floor plus the bytes at its minimum rate).

    A server that ignores Range (it answers ``200`` with the whole shard) is read ONCE: the
    body, bounded by the size HEAD and the answer declare and by ``fallback_max`` (default
    ``CUBECAST_RANGE_FALLBACK_MAX``, else 2 GiB), is spooled to an anonymous temporary file,
    with a warning, and every later read is served from it; ``full_downloads`` counts such
    bodies (0 or 1). A shard larger than ``fallback_max`` on such a server is refused with
    one line (download it instead, or raise the cap).
    """

    FALLBACK_MAX = 2 << 30

    def __init__(
        self,
        url: str,
        session: requests.Session | None = None,
        headers: dict[str, str] | None = None,
        *,
        limits: Limits | None = None,
        fallback_max: int | None = None,
    ) -> None:
        self.url = url
        self.session = session or watched_session()
        self.headers = {"Accept-Encoding": "identity", **(headers or {})}
        self.limits = limits or Limits.from_env()
        self.fallback_max = (
            fallback_max
            if fallback_max is not None
            else env_size("CUBECAST_RANGE_FALLBACK_MAX", self.FALLBACK_MAX)
        )
        self.pos = 0
        self.ranges: list[tuple[int, int]] = []
        self.full_downloads = 0
        self._whole: Any = None  # the spooled body when the server ignores Range
        self._last = b""  # the bytes of the latest range request
        clock = Deadline(url, self.limits)
        try:
            with watchdog(clock):
                r = self.session.head(
                    url,
                    allow_redirects=True,
                    headers=self.headers,
                    timeout=min(30.0, clock.check()),
                )
            clock.check()
        except TRANSPORT as exc:
            raise SourceError(f"{url}: unreachable ({exc.__class__.__name__})") from exc
        if r.status_code >= 400:
            raise SourceError(f"{url}: HTTP {r.status_code}")
        size = int_header(r, "Content-Length")
        if size is None:
            raise SourceError(f"{url}: the server gives no Content-Length for the shard")
        self.size = size

    def close(self) -> None:
        if self._whole is not None:
            self._whole.close()
            self._whole = None
        super().close()

    def read_range(self, start: int, end: int) -> bytes:
        if self._whole is None:
            self._fetch(start, end)
        if self._whole is not None:  # the server ignored Range: served from the spooled copy
            self._whole.seek(start)
            data = self._whole.read(end - start)
        else:
            data = self._last
            self._last = b""
        self.ranges.append((start, start + len(data)))
        return data

    def _fetch(self, start: int, end: int) -> None:
        """``bytes start..end-1`` into ``_last``, or the whole body into ``_whole``."""
        what = f"range {start}-{end - 1}"
        clock = Deadline(self.url, self.limits)
        clock.declared = end - start
        headers = {**self.headers, "Range": f"bytes={start}-{end - 1}"}
        try:
            timeout = min(60.0, clock.check())
            with (
                watchdog(clock),
                self.session.get(self.url, headers=headers, stream=True, timeout=timeout) as r,
            ):
                clock.check()
                if r.status_code == 200:
                    self._spool(r, clock)
                    return
                if r.status_code != 206:
                    raise SourceError(f"{self.url}: HTTP {r.status_code} for {what}")
                cr = content_range(r)
                if cr is None or cr[0] != start or cr[1] > end:
                    raise SourceError(
                        f"{self.url}: asked for {what}, the server sent "
                        f"{r.headers.get('Content-Range')!r}"
                    )
                buf = io.BytesIO()
                read_body(
                    r,
                    buf,
                    bound=end - start,
                    over=lambda k: SourceError(
                        f"{self.url}: more than the {end - start:,} bytes asked for {what}"
                    ),
                    clock=clock,
                    timeout=60.0,
                )
                self._last = buf.getvalue()
        except TRANSPORT as exc:
            raise SourceError(f"{self.url}: read failed ({exc.__class__.__name__})") from exc

    def _spool(self, r: requests.Response, clock: Deadline) -> None:
        """The server ignored Range: keep its whole body, once, within bounds."""
        declared = int_header(r, "Content-Length")
        if declared is not None and declared != self.size:
            raise SourceError(
                f"{self.url}: ignores Range and sends {declared:,} bytes, not the "
                f"{self.size:,} its HEAD declared"
            )
        if self.size > self.fallback_max:
            raise SourceError(
                f"{self.url}: the server ignores Range requests and the shard is "
                f"{self.size:,} bytes, over the {self.fallback_max:,} read whole "
                "(CUBECAST_RANGE_FALLBACK_MAX); download the shard instead"
            )
        log.warning("%s: the server ignores Range requests; reading the shard once", self.url)
        clock.declared = self.size
        spool = tempfile.TemporaryFile()  # noqa: SIM115  (kept open, closed in close())
        try:
            got = read_body(
                r,
                spool,
                bound=self.size,
                over=lambda k: SourceError(
                    f"{self.url}: ignores Range and sends more than the {self.size:,} bytes "
                    "its HEAD declared"
                ),
                clock=clock,
                timeout=60.0,
            )
            if got != self.size:
                raise SourceError(
                    f"{self.url}: ignores Range and sent {got:,} of its {self.size:,} bytes"
                )
        except BaseException:
            spool.close()
            raise
        self.full_downloads += 1
        self._whole = spool

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)
