"""What a cube was made from, so a later run, on any machine, can tell whether it changed
without downloading it again.

While an adapter loads a cube, :class:`RecordingMirror` notes what it listed and fetched. The
:class:`SourceRecord` keeps the listings that name the cube (a new daily image shows up in
them), the folders it fetched whole (a zarr store) and any other file it read; the split
file is left out (the cube's split is kept on its own, so adding cubes to ``splits.csv`` does
not change every cube). :func:`source_fingerprint` re-runs the listings and hashes every
file's identity as the mirror states it, which costs no download: an HTTP mirror's
``SHA256SUMS``, a hub file's LFS SHA-256 or blob id, another fsspec store's checksum or
ETag, and for a local folder the SHA-256 of the file (cached on path, size and mtime).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import SourceError
from pipeline.sources.mirror import FsspecMirror, HttpMirror, LocalMirror, Mirror


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source_digest(paths: Iterable[Path]) -> dict[str, str]:
    """SHA-256 of every file under ``paths`` (files or folders), keyed by resolved path."""
    files: set[Path] = set()
    for p in paths:
        p = Path(p).resolve()
        files |= {f for f in p.rglob("*") if f.is_file()} if p.is_dir() else {p}
    return {str(f): _sha256(f) for f in sorted(files)}


class RecordingMirror:
    """A mirror that notes what an adapter listed and fetched (relative paths) and the local
    paths it got, so the encode cache and the published index can key on them.
    ``on_fetch(rel)`` is called after each file arrives."""

    def __init__(self, inner: Mirror, on_fetch: Callable[[str], None] | None = None) -> None:
        self.inner = inner
        self.on_fetch = on_fetch
        self.paths: set[Path] = set()
        self.lists: dict[str, list[str]] = {}
        self.fetched: set[str] = set()
        self.trees: set[str] = set()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def list(self, pattern: str) -> list[str]:
        found = self.inner.list(pattern)
        self.lists[pattern] = list(found)
        return found

    def fetch(self, rel: str) -> Path:
        p = self.inner.fetch(rel)
        self.paths.add(p)
        self.fetched.add(rel)
        if self.on_fetch:
            self.on_fetch(rel)
        return p

    def fetch_tree(self, rel: str) -> Path:
        p = self.inner.fetch_tree(rel)
        self.paths.add(p)
        self.trees.add(rel.rstrip("/"))
        if self.on_fetch:
            self.on_fetch(rel)
        return p

    def record(self, cube_id: str, skip: Iterable[str] = ()) -> SourceRecord:
        """What this cube was made from; ``skip``: shared files that are not part of it."""
        lists = sorted(p for p in self.lists if cube_id in p)
        listed = {r for p in lists for r in self.lists[p]}
        trees = sorted(self.trees)
        inside = tuple(t + "/" for t in trees)
        files = sorted(
            r for r in self.fetched - set(skip) if r not in listed and not r.startswith(inside)
        )
        return SourceRecord(lists, trees, files)


@dataclass(frozen=True)
class SourceRecord:
    lists: list[str] = field(default_factory=list)  # glob patterns that name the cube
    trees: list[str] = field(default_factory=list)  # folders fetched whole
    files: list[str] = field(default_factory=list)  # other files read

    def to_dict(self) -> dict[str, list[str]]:
        return {"lists": self.lists, "trees": self.trees, "files": self.files}

    @classmethod
    def from_dict(cls, data: Any) -> SourceRecord:
        if not isinstance(data, dict):
            raise ValueError("source record is not an object")
        parts = [data.get(k, []) for k in ("lists", "trees", "files")]
        if not all(isinstance(p, list) and all(isinstance(x, str) for x in p) for p in parts):
            raise ValueError("source record lists must hold strings")
        return cls(*[list(p) for p in parts])


class DigestCache:
    """SHA-256 of local files, kept in a JSON file keyed on path, size and mtime, so a local
    mirror is read once per machine, not once per run."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.entries: dict[str, list[Any]] = {}
        self.dirty = False
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text())
                self.entries = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self.entries = {}

    def sha256(self, file: Path) -> str:
        st = file.stat()
        key = str(file.resolve())
        hit = self.entries.get(key)
        if isinstance(hit, list) and hit[:2] == [st.st_size, st.st_mtime_ns]:
            return str(hit[2])
        digest = _sha256(file)
        self.entries[key] = [st.st_size, st.st_mtime_ns, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".part")
        tmp.write_text(json.dumps(self.entries))
        os.replace(tmp, self.path)
        self.dirty = False


def base_mirror(mirror: Mirror) -> Mirror:
    """The mirror under any wrappers (recording, fault hooks)."""
    while isinstance(mirror, RecordingMirror):
        mirror = mirror.inner
    return mirror


def tree_members(mirror: Mirror, rel: str) -> list[str]:
    """Relative paths of the files under folder ``rel`` of the mirror."""
    m, rel = base_mirror(mirror), rel.rstrip("/")
    if isinstance(m, LocalMirror):
        root = m.root / rel
        return sorted(
            f"{rel}/{p.relative_to(root).as_posix()}" for p in root.rglob("*") if p.is_file()
        )
    if isinstance(m, HttpMirror):
        return m.under(rel)
    if isinstance(m, FsspecMirror):
        prefix = m.root.rstrip("/") + "/"
        return sorted(str(p).removeprefix(prefix) for p in m.fs.find(m._remote(rel)))
    raise SourceError(f"{m.location}: cannot list the files of {rel} on this kind of mirror")


def identity(mirror: Mirror, rel: str, digests: DigestCache) -> str:
    """How the mirror names this file's content, without downloading it."""
    m = base_mirror(mirror)
    if isinstance(m, HttpMirror):
        if rel not in m.index:
            raise SourceError(f"{m.url(rel)}: not listed in {m.url(m.index_name)}")
        return "sha256:" + m.index[rel]
    if isinstance(m, LocalMirror):
        return "sha256:" + digests.sha256(m.root / rel)
    if isinstance(m, FsspecMirror):
        info = m.fs.info(m._remote(rel))
        lfs = info.get("lfs")
        if isinstance(lfs, dict) and lfs.get("sha256"):
            return "sha256:" + str(lfs["sha256"])
        for key in ("sha256", "blob_id", "ETag", "etag", "md5", "checksum"):
            if info.get(key):
                return f"{key}:{info[key]}"
        return f"size:{info.get('size')}:mtime:{info.get('mtime') or info.get('LastModified')}"
    raise SourceError(f"{m.location}: cannot fingerprint files on this kind of mirror")


def source_fingerprint(mirror: Mirror, record: SourceRecord, digests: DigestCache) -> str:
    """One hash over the cube's listings and the identity of every file it was made from."""
    listings = {p: sorted(mirror.list(p)) for p in record.lists}
    members = set(record.files) | {r for found in listings.values() for r in found}
    for tree in record.trees:
        members |= set(tree_members(mirror, tree))
    try:
        ids = {rel: identity(mirror, rel, digests) for rel in sorted(members)}
    except OSError as exc:
        raise SourceError(
            f"{mirror.location}: cannot read {exc.filename} ({exc.strerror})"
        ) from exc
    key = json.dumps({"lists": listings, "files": ids}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()
