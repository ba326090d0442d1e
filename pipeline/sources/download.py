"""HTTP(S) downloads that survive real networks: retries with backoff, resume from a partial
file with Range requests, size and SHA-256 checks, a cache folder and a progress bar.

A file reaches its final name only when complete and verified; until then it lives as
``<name>.part`` next to it, which the next attempt (or the next run) resumes.

Every download is bounded (:class:`~pipeline.sources.limits.Limits`), because a mirror is
someone else's server:

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
- **disk**: a :class:`~pipeline.sources.disk_budget.DiskBudget` (a ``max_disk`` for a
  folder: the cache, or the work folder holding it; ``CUBECAST_MAX_CACHE`` gives one for the
  cache) is checked before and while writing, and the file system keeps ``disk_reserve``
  bytes free (default 256 MiB).

The parts live in their own modules: :mod:`~pipeline.sources.limits` (sizes, deadlines),
:mod:`~pipeline.sources.watchdog` (cutting trickling connections),
:mod:`~pipeline.sources.disk_budget`, :mod:`~pipeline.sources.body` (headers, the body
reader) and :mod:`~pipeline.sources.hub_auth` (where the token goes).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm.auto import tqdm

from pipeline.codec.encoded import file_sha256
from pipeline.errors import SourceError
from pipeline.sources.body import TRANSPORT, content_range, read_body, total_size
from pipeline.sources.disk_budget import DiskBudget, DiskGuard
from pipeline.sources.hub_auth import auth_headers
from pipeline.sources.limits import ENV_CAP, Deadline, DeadlineError, Limits
from pipeline.sources.watchdog import watchdog, watched_session

log = logging.getLogger(__name__)
_FATAL = {400, 401, 403, 404, 405, 410, 451}


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    timeout: float = 60.0

    def delay(self, attempt: int) -> float:
        return min(self.backoff * 2**attempt, self.max_backoff)


def _request_timeout(policy: RetryPolicy, clock: Deadline) -> float:
    return max(min(policy.timeout, clock.check()), 0.01)


def _refuse_and_remove(part: Path, exc: SourceError) -> SourceError:
    part.unlink(missing_ok=True)
    return exc


def _resume_offset(part: Path, size: int | None) -> int:
    """Where the next request starts: the end of ``part``, unless it is stale."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:  # a stale part from another version of the file
        part.unlink()
        offset = 0
    return offset


def _request_headers(url: str, offset: int) -> dict[str, str]:
    return {
        "Accept-Encoding": "identity",
        **auth_headers(url),
        **({"Range": f"bytes={offset}-"} if offset else {}),
    }


def _complete_part(url: str, part: Path, offset: int, size: int | None) -> int:
    """HTTP 416 on a resumed request: nothing is left to fetch, the part is complete."""
    if size is not None and offset != size:
        raise _refuse_and_remove(
            part,
            SourceError(
                f"{url}: the server ends before the {size:,} bytes the "
                f"index declares (HTTP 416 at {offset:,})"
            ),
        )
    return offset


def _check_answer(url: str, r: requests.Response, offset: int) -> int:
    """Refuse an answer that is not the file's content from ``offset``; returns the offset
    the body starts at (0 when the server ignored Range)."""
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
            raise SourceError(f"{url}: asked for bytes {offset}- and the server sent range {got!r}")
    return offset


def _body_bound(url: str, size: int | None, total: int | None, limits: Limits) -> tuple[int, str]:
    """The most bytes the file may have, and who declares it (for the error past it)."""
    if size is not None and total is not None and total != size:
        raise SourceError(f"{url}: the server declares {total:,} bytes, the index {size:,}")
    if size is None and total is not None and total > limits.cap:
        raise SourceError(
            f"{url}: the server declares {total:,} bytes, over the {limits.cap:,} byte "
            f"cap for a file whose size the index does not give ({ENV_CAP})"
        )
    if size is not None:
        return size, "the index declares"
    if total is not None:
        return total, "the server declares"
    return limits.cap, f"the cap allows ({ENV_CAP})"


def _write_body(
    r: requests.Response,
    part: Path,
    *,
    offset: int,
    total: int | None,
    bound: int,
    declared_by: str,
    clock: Deadline,
    guard: DiskGuard,
    timeout: float,
    progress: bool,
) -> None:
    """Append the body to ``part`` (from ``offset``) under a progress bar; a body past
    ``bound`` or the disk's limits removes the part."""
    url = clock.url

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
    desc = Path(url).name[:40]
    with (
        f,
        tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=desc,
            disable=not progress, leave=False,
        ) as bar,
    ):  # fmt: skip

        def step(n: int) -> None:
            bar.update(n)
            try:
                guard(n)
            except SourceError as exc:
                raise _refuse_and_remove(part, exc) from None

        read_body(
            r, f, bound=bound - offset, over=over, clock=clock, timeout=timeout, on_block=step
        )


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
    offset = _resume_offset(part, size)
    headers = _request_headers(url, offset)
    timeout = _request_timeout(policy, clock)
    with (
        watchdog(clock),
        session.get(url, headers=headers, stream=True, timeout=timeout) as r,
    ):
        clock.check()
        if r.status_code == 416 and offset:
            return _complete_part(url, part, offset, size)
        offset = _check_answer(url, r, offset)
        total = total_size(r, offset)
        bound, declared_by = _body_bound(url, size, total, limits)
        clock.declared = size if size is not None else total
        guard = DiskGuard(url, part, budget, limits)
        try:
            guard.check_ahead(bound - offset if clock.declared is not None else 0)
        except SourceError as exc:
            raise _refuse_and_remove(part, exc) from None
        _write_body(
            r,
            part,
            offset=offset,
            total=total,
            bound=bound,
            declared_by=declared_by,
            clock=clock,
            guard=guard,
            timeout=policy.timeout,
            progress=progress,
        )
        return total


def _cached(url: str, dest: Path, sha256: str | None, size: int | None) -> bool:
    """Whether a verified copy is at ``dest``; if not, make room for one there."""
    try:
        if dest.is_file() and (sha256 is None or file_sha256(dest) == sha256):
            if size is None or dest.stat().st_size == size:
                return True
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_dir():
            raise SourceError(f"{url}: {dest} is a folder in the cache, not a file")
    except OSError as exc:
        raise SourceError(f"{url}: cannot place the download at {dest} ({exc})") from exc
    return False


def _finish(url: str, part: Path, dest: Path, expected: int | None, sha256: str | None) -> None:
    """Check the complete ``part`` (size, SHA-256) and give it its final name; a short one
    is a dropped connection, worth a retry."""
    got = part.stat().st_size
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


def _kept(part: Path) -> str:
    return "; partial file kept for the next run" if part.exists() else ""


def _unreachable(url: str, policy: RetryPolicy, last: BaseException | None) -> SourceError:
    detail = " ".join(str(last).split())[:200]
    return SourceError(
        f"{url}: unreachable after {policy.retries + 1} attempts ({last.__class__.__name__}: "
        f"{detail})"
    )


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
    if _cached(url, dest, sha256, size):
        return dest
    part = dest.with_name(dest.name + ".part")
    session = session or watched_session()
    clock = Deadline(url, limits)
    last: BaseException | None = None
    for attempt in range(policy.retries + 1):
        try:
            total = _fetch_once(
                url, part, session, policy, progress,
                size=size, limits=limits, clock=clock, budget=budget,
            )  # fmt: skip
            _finish(url, part, dest, size if size is not None else total, sha256)
            return dest
        except DeadlineError as exc:
            raise DeadlineError(f"{exc}{_kept(part)}") from None
        except SourceError:
            part.unlink(missing_ok=True)  # refused: nothing of it is kept
            raise
        except TRANSPORT as exc:
            last = exc
            if clock.left() <= 0:
                raise DeadlineError(f"{clock.error()}{_kept(part)}") from None
            if attempt < policy.retries:
                wait = min(policy.delay(attempt), max(clock.left(), 0.0))
                log.warning("%s: %s; retrying in %.1f s", url, exc.__class__.__name__, wait)
                time.sleep(wait)
    raise _unreachable(url, policy, last)
