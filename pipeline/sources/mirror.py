"""Where a dataset's files live: a local folder, an HTTP(S) base URL, or any fsspec URL
(``hf://datasets/ORG/NAME`` through huggingface_hub's file system, ``s3://``, ...).

Adapters see one interface: list relative paths by glob, and fetch a file or a folder to a
local path. Remote files land in a cache folder, so a re-run reads them from disk.
"""

from __future__ import annotations

import bisect
import functools
import os
import re
import shutil
import time
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Protocol

from pipeline.confine import confined, safe_relpath
from pipeline.errors import SourceError, UnsafePathError
from pipeline.sources.disk_budget import DiskBudget, cache_budget
from pipeline.sources.download import RetryPolicy, download
from pipeline.sources.limits import Limits


@functools.lru_cache(maxsize=256)
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


INDEX_CAP = 256 << 20  # bytes: an index larger than this is not a file list
_INDEX_LINE = re.compile(r"([0-9a-fA-F]{64})(?:[ \t]+([0-9]+))?[ \t]+\*?(.*)")


def parse_index(text: str, source: str) -> dict[str, tuple[str, int | None]]:
    """``sha256sum`` output, ``<hex>  <path>`` per line, with an optional size column:
    ``<hex>  <size>  <path>`` (bytes). Blank lines and ``#`` comments are skipped.

    Paths go through :func:`~pipeline.confine.safe_relpath`; the index is refused (one line
    naming ``source`` and the line) if one is absolute or climbs out, if a name is both a
    file and a folder, if a name ends in ``.part`` (the downloads' work files) or if a path
    is listed twice with different content. (An old index whose path starts with digits and
    a space reads them as a size: give such a line its size column.)
    """
    entries: dict[str, tuple[str, int | None]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _INDEX_LINE.fullmatch(line.strip())
        if m is None or not m[3].strip():
            raise SourceError(f"{source}: line {n} is not '<sha256> [<size>] <path>'")
        sha, size = m[1].lower(), int(m[2]) if m[2] is not None else None
        try:  # a hostile index must not name files outside the cache
            rel = safe_relpath(m[3].strip(), f"{source}: line {n}: path")
        except UnsafePathError as exc:
            raise SourceError(str(exc)) from None
        if any(part.endswith(".part") for part in rel.split("/")):
            raise SourceError(
                f"{source}: line {n}: path {rel!r} ends in '.part', the name of a download "
                "in progress"
            )
        if rel in entries and entries[rel] != (sha, size):
            raise SourceError(f"{source}: line {n}: {rel!r} is listed twice, differently")
        entries[rel] = (sha, size)
    folders = {"/".join(r.split("/")[:k]) for r in entries for k in range(1, r.count("/") + 1)}
    clash = sorted(folders & entries.keys())
    if clash:
        raise SourceError(f"{source}: {clash[0]!r} is listed as a file and as a folder")
    return entries


class HttpMirror:
    """A static HTTP(S) mirror; it cannot list folders, so an index file names its files.

    The index is ``sha256sum`` output (``<hex>  <relative path>`` per line, optionally
    ``<hex>  <size>  <relative path>``, see :func:`parse_index`), so every file is checked
    after download and, where a size is given, no download may grow past it. ``limits`` and
    ``budget`` bound every download (:mod:`pipeline.sources.download`).
    """

    def __init__(
        self,
        base_url: str,
        cache: Path,
        index: str = "SHA256SUMS",
        policy: RetryPolicy = RetryPolicy(),
        progress: bool = True,
        limits: Limits | None = None,
        budget: DiskBudget | None = None,
    ) -> None:
        self.location = base_url.rstrip("/")
        self.cache = cache
        self.index_name = safe_relpath(index, f"{self.location}: index")
        self.policy = policy
        self.progress = progress
        self.limits = limits or Limits.from_env()
        self.budget = budget if budget is not None else cache_budget(cache)

    def url(self, rel: str) -> str:
        return f"{self.location}/{rel}"

    @cached_property
    def entries(self) -> dict[str, tuple[str, int | None]]:
        """Each listed path's SHA-256 and size (None where the index gives none)."""
        source = self.url(self.index_name)
        work = confined(self.cache, f".index-{os.getpid()}", f"{self.location}: index")
        try:
            path = download(
                source,
                work,
                policy=self.policy,
                progress=False,
                limits=replace(self.limits, cap=min(self.limits.cap, INDEX_CAP)),
                budget=self.budget,
            )
            try:
                text = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SourceError(f"{source}: not UTF-8 text (byte {exc.start})") from None
            except OSError as exc:
                raise SourceError(f"{source}: cannot read ({exc})") from exc
        finally:
            work.unlink(missing_ok=True)
        return parse_index(text, source)

    @cached_property
    def index(self) -> dict[str, str]:
        """Each listed path's SHA-256."""
        return {rel: sha for rel, (sha, _) in self.entries.items()}

    @cached_property
    def sizes(self) -> dict[str, int]:
        """The sizes the index declares."""
        return {rel: n for rel, (_, n) in self.entries.items() if n is not None}

    @cached_property
    def paths(self) -> list[str]:
        """Every listed file and every folder above one, sorted: what :meth:`list` globs."""
        found: set[str] = set()
        for rel in self.entries:
            parts = rel.split("/")
            found.update("/".join(parts[:k]) for k in range(1, len(parts) + 1))
        return sorted(found)

    def _starting(self, names: list[str], prefix: str) -> list[str]:
        """The sorted ``names`` that start with ``prefix`` (a binary search, not a scan:
        planning lists each of tens of thousands of cubes)."""
        lo = hi = bisect.bisect_left(names, prefix)
        while hi < len(names) and names[hi].startswith(prefix):
            hi += 1
        return names[lo:hi]

    def list(self, pattern: str) -> list[str]:
        # every match starts with the pattern's literal head; the rest (``*.tif``, the same
        # for every cube) is compiled once
        literal = re.split(r"[*?]", pattern, maxsplit=1)[0]
        rx, n = glob_regex(pattern[len(literal) :]), len(literal)
        return [p for p in self._starting(self.paths, literal) if rx.match(p, n)]

    def under(self, folder: str) -> list[str]:
        """The listed files below ``folder``, sorted."""
        return self._starting(self.files, folder.rstrip("/") + "/")

    @cached_property
    def files(self) -> list[str]:
        return sorted(self.entries)

    def fetch(self, rel: str) -> Path:
        if rel not in self.entries:
            raise SourceError(f"{self.url(rel)}: not listed in {self.url(self.index_name)}")
        sha, size = self.entries[rel]
        return download(
            self.url(rel),
            confined(self.cache, rel, f"{self.url(self.index_name)}: path"),
            sha256=sha,
            size=size,
            policy=self.policy,
            progress=self.progress,
            limits=self.limits,
            budget=self.budget,
        )

    def fetch_tree(self, rel: str) -> Path:
        members = self.under(rel)
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
    max_disk: int | None = None,
    disk_root: str | os.PathLike[str] | None = None,
) -> Mirror:
    """The mirror at ``location``. ``max_disk`` (bytes) bounds the disk use of ``disk_root``
    (default: the cache folder) while an HTTP mirror downloads; without it,
    ``CUBECAST_MAX_CACHE`` bounds the cache folder."""
    cache_dir = Path(cache) if cache else default_cache()
    if location.startswith(("http://", "https://")):
        key = re.sub(r"[^A-Za-z0-9._-]+", "_", location.split("://", 1)[1]).strip("_")
        budget = (
            DiskBudget(Path(disk_root or cache_dir), max_disk)
            if max_disk is not None
            else cache_budget(cache_dir)
        )
        return HttpMirror(location, cache_dir / key, index=index, progress=progress, budget=budget)
    if "://" in location and not location.startswith("file://"):
        key = re.sub(r"[^A-Za-z0-9._-]+", "_", location).strip("_")
        return FsspecMirror(location, cache_dir / key, revision=revision)
    return LocalMirror(location.removeprefix("file://"))
