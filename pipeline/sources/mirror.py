"""Where a dataset's files live: a local folder, an HTTP(S) base URL, or any fsspec URL
(``hf://datasets/ORG/NAME`` through huggingface_hub's file system, ``s3://``, ...).

Adapters see one interface: list relative paths by glob, and fetch a file or a folder to a
local path. Remote files land in a cache folder, so a re-run reads them from disk.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from functools import cached_property
from pathlib import Path
from typing import Protocol

from pipeline.confine import confined, safe_relpath
from pipeline.errors import SourceError, UnsafePathError
from pipeline.sources.download import RetryPolicy, download


def glob_regex(pattern: str) -> re.Pattern[str]:
    """``**/`` spans folders (or none), ``*`` and ``?`` stay within one path component."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def default_cache() -> Path:
    base = os.environ.get("CUBECAST_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(base or Path.home() / ".cache") / "cubecast"


class Mirror(Protocol):
    location: str

    def list(self, pattern: str) -> list[str]: ...

    def fetch(self, rel: str) -> Path: ...

    def fetch_tree(self, rel: str) -> Path: ...


class LocalMirror:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.location = str(root)
        if not self.root.is_dir():
            raise SourceError(f"{root}: source folder does not exist")

    def list(self, pattern: str) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.glob(pattern))

    def fetch(self, rel: str) -> Path:
        # lexical check only: symlinks the owner put in their own source folder are fine
        p = self.root / safe_relpath(rel, f"{self.location}: file")
        if not p.exists():
            raise SourceError(f"{p}: not found in source folder {self.root}")
        return p

    fetch_tree = fetch


class HttpMirror:
    """A static HTTP(S) mirror; it cannot list folders, so an index file names its files.

    The index is ``sha256sum`` output (``<hex>  <relative path>`` per line), so every file
    is checked after download.
    """

    def __init__(
        self,
        base_url: str,
        cache: Path,
        index: str = "SHA256SUMS",
        policy: RetryPolicy = RetryPolicy(),
        progress: bool = True,
    ) -> None:
        self.location = base_url.rstrip("/")
        self.cache = cache
        self.index_name = index
        self.policy = policy
        self.progress = progress

    def url(self, rel: str) -> str:
        return f"{self.location}/{rel}"

    @cached_property
    def index(self) -> dict[str, str]:
        path = download(
            self.url(self.index_name),
            self.cache / f".{self.index_name}.{os.getpid()}",
            policy=self.policy,
            progress=False,
        )
        entries: dict[str, str] = {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]):
                raise SourceError(f"{self.url(self.index_name)}: line {n} is not '<sha256>  path'")
            rel = parts[1].lstrip("*").strip()
            try:  # a hostile index must not name files outside the cache
                rel = safe_relpath(rel, f"{self.url(self.index_name)}: line {n}: path")
            except UnsafePathError as exc:
                raise SourceError(str(exc)) from None
            entries[rel] = parts[0]
        path.unlink()
        return entries

    def list(self, pattern: str) -> list[str]:
        rx = glob_regex(pattern)
        found: set[str] = set()
        for rel in self.index:
            parts = rel.split("/")
            for k in range(1, len(parts) + 1):
                prefix = "/".join(parts[:k])
                if rx.match(prefix):
                    found.add(prefix)
        return sorted(found)

    def fetch(self, rel: str) -> Path:
        if rel not in self.index:
            raise SourceError(f"{self.url(rel)}: not listed in {self.url(self.index_name)}")
        return download(
            self.url(rel),
            confined(self.cache, rel, f"{self.url(self.index_name)}: path"),
            sha256=self.index[rel],
            policy=self.policy,
            progress=self.progress,
        )

    def fetch_tree(self, rel: str) -> Path:
        members = [r for r in self.index if r.startswith(rel.rstrip("/") + "/")]
        if not members:
            raise SourceError(f"{self.url(rel)}: no files under it in the index")
        for r in members:
            self.fetch(r)
        return confined(self.cache, rel, f"{self.url(self.index_name)}: path")


class FsspecMirror:
    """Any fsspec URL; ``hf://`` goes through huggingface_hub's ``HfFileSystem``."""

    def __init__(self, url: str, cache: Path, revision: str | None = None) -> None:
        import fsspec

        self.location = url.rstrip("/")
        self.cache = cache
        opts = {"revision": revision} if revision and url.startswith("hf://") else {}
        if url.startswith("hf://"):
            opts["token"] = os.environ.get("HF_TOKEN") or None
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.location, **opts)
        except (ImportError, ValueError) as exc:
            raise SourceError(f"{url}: unsupported source URL ({exc})") from exc

    def _remote(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def list(self, pattern: str) -> list[str]:
        try:
            hits = self.fs.glob(self._remote(pattern))
        except Exception as exc:  # every backend raises its own types
            raise SourceError(f"{self.location}: cannot list ({exc})") from exc
        root = self.root.rstrip("/") + "/"
        return sorted(str(h).removeprefix(root) for h in hits)

    def _get(self, rel: str, recursive: bool) -> Path:
        dest = confined(self.cache, rel, f"{self.location}: path")
        if dest.exists():
            return dest
        part = dest.with_name(dest.name + ".part")
        shutil.rmtree(part, ignore_errors=True) if part.is_dir() else part.unlink(missing_ok=True)
        part.parent.mkdir(parents=True, exist_ok=True)
        policy = RetryPolicy()
        for attempt in range(policy.retries + 1):
            try:
                self.fs.get(self._remote(rel), str(part), recursive=recursive)
                os.replace(part, dest)
                return dest
            except FileNotFoundError as exc:
                raise SourceError(f"{self.location}/{rel}: not found") from exc
            except Exception as exc:  # transient network errors come in many types
                if attempt == policy.retries:
                    raise SourceError(f"{self.location}/{rel}: download failed ({exc})") from exc
                time.sleep(policy.delay(attempt))
        raise AssertionError("unreachable")

    def fetch(self, rel: str) -> Path:
        return self._get(rel, recursive=False)

    def fetch_tree(self, rel: str) -> Path:
        return self._get(rel, recursive=True)


def open_mirror(
    location: str,
    cache: str | os.PathLike[str] | None = None,
    index: str = "SHA256SUMS",
    revision: str | None = None,
    progress: bool = True,
) -> Mirror:
    cache_dir = Path(cache) if cache else default_cache()
    if location.startswith(("http://", "https://")):
        key = re.sub(r"[^A-Za-z0-9._-]+", "_", location.split("://", 1)[1]).strip("_")
        return HttpMirror(location, cache_dir / key, index=index, progress=progress)
    if "://" in location and not location.startswith("file://"):
        key = re.sub(r"[^A-Za-z0-9._-]+", "_", location).strip("_")
        return FsspecMirror(location, cache_dir / key, revision=revision)
    return LocalMirror(location.removeprefix("file://"))
