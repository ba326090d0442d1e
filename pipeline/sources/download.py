"""HTTP(S) downloads that survive real networks: retries with backoff, resume from a partial
file with Range requests, size and SHA-256 checks, a cache folder and a progress bar.

A file reaches its final name only when complete and verified; until then it lives as
``<name>.part`` next to it, which the next attempt (or the next run) resumes.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests
from tqdm.auto import tqdm

from pipeline.codec.encoded import file_sha256
from pipeline.errors import SourceError

log = logging.getLogger(__name__)
_FATAL = {400, 401, 403, 404, 405, 410, 451}
CHUNK = 1 << 20


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    timeout: float = 60.0

    def delay(self, attempt: int) -> float:
        return min(self.backoff * 2**attempt, self.max_backoff)


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


def _total_size(r: requests.Response, offset: int) -> int | None:
    rng = r.headers.get("Content-Range")
    if rng and "/" in rng and not rng.endswith("/*"):
        return int(rng.rsplit("/", 1)[1])
    length = r.headers.get("Content-Length")
    return int(length) + (offset if r.status_code == 206 else 0) if length else None


def _fetch_once(
    url: str, part: Path, session: requests.Session, policy: RetryPolicy, progress: bool
) -> int | None:
    """One attempt: append to ``part`` from where it ends; returns the total size if known."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {**auth_headers(url), **({"Range": f"bytes={offset}-"} if offset else {})}
    with session.get(url, headers=headers, stream=True, timeout=policy.timeout) as r:
        if r.status_code == 416 and offset:  # nothing left to fetch: the part is complete
            return offset
        if r.status_code in _FATAL:
            raise SourceError(f"{url}: HTTP {r.status_code} {r.reason or ''}".rstrip())
        r.raise_for_status()
        if offset and r.status_code == 200:  # server ignored Range: start over
            offset = 0
        total = _total_size(r, offset)
        mode = "ab" if offset else "wb"
        with (
            open(part, mode) as f,
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
            for block in r.iter_content(1 << 16):
                f.write(block)
                bar.update(len(block))
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
) -> Path:
    """Fetch ``url`` to ``dest`` unless a verified copy is already there."""
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or file_sha256(dest) == sha256):
        if size is None or dest.stat().st_size == size:
            return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    session = session or requests.Session()
    last: Exception | None = None
    for attempt in range(policy.retries + 1):
        try:
            total = _fetch_once(url, part, session, policy, progress)
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
            os.replace(part, dest)
            return dest
        except SourceError:
            raise
        except (requests.RequestException, OSError) as exc:
            last = exc
            if attempt < policy.retries:
                wait = policy.delay(attempt)
                log.warning("%s: %s; retrying in %.1f s", url, exc.__class__.__name__, wait)
                time.sleep(wait)
    raise SourceError(
        f"{url}: unreachable after {policy.retries + 1} attempts ({last.__class__.__name__}: "
        f"{last})"
    )
