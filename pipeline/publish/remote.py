"""A publish target as incremental publishing sees it: read a file or a byte range, list the
files, and commit a batch of additions and deletions.

On the hub a batch is one commit (shards pre-uploaded as LFS objects first, then shards,
index, ``.tacocat`` and card in a single ``create_commit``), so readers see all of it or
none of it. A run reads the listing and the index at one revision and every commit names
its parent (that revision, then its own last commit): a concurrent run's commit makes the
hub refuse ours (HTTP 412) instead of one overwriting the other. On a folder or fsspec
target a commit holds the target's lease (:mod:`pipeline.publish.lease`) and re-reads the
index inside it: if another run committed since this one planned, nothing is written. Each
file is written under a temporary name and renamed, the index last: a killed batch leaves at
most shards that no index names, which the next commit deletes.

Every name a commit or a read uses comes from an index someone else may have written: it
passes :func:`pipeline.confine.safe_relpath` before it is joined to the target's root.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pipeline.confine import safe_relpath
from pipeline.errors import PublishError
from pipeline.publish.index import INDEX_FILE, MAX_INDEX_BYTES

OnUpload = Callable[[str], None]


@dataclass(frozen=True)
class RemoteFile:
    """A file on the target as its listing states it: size, and where the target knows it,
    the SHA-256 (the hub's LFS id) or the git blob id (the hub's small files)."""

    size: int | None = None
    sha256: str | None = None
    blob: str | None = None


class Remote(Protocol):
    target: str

    def read(self, rel: str, limit: int = MAX_INDEX_BYTES) -> bytes | None: ...

    def read_range(self, rel: str, start: int, end: int) -> bytes: ...

    def download(self, rel: str, dest: Path) -> Path: ...

    def snapshot(self) -> tuple[dict[str, RemoteFile], bytes | None]: ...

    def file_sha256(self, rel: str, entry: RemoteFile) -> str | None: ...

    def stamp(self, rel: str) -> str | None: ...

    def commit(
        self,
        folder: Path,
        adds: list[str],
        deletes: list[str],
        message: str,
        on_upload: OnUpload,
        expect_index: bytes | None,
    ) -> str | None: ...


def name_of(target: str, rel: str) -> str:
    """``rel`` checked before it is joined to the target's root."""
    return safe_relpath(rel, f"{target}: file name")


def moved(target: str) -> PublishError:
    """The error of a run that lost a race: someone committed since it read the index."""
    return PublishError(
        f"{target}: {INDEX_FILE} changed since this run read it (another run committed "
        "there); this batch was not committed, run again to publish from the new state"
    )
