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

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from pipeline.confine import safe_relpath
from pipeline.errors import CubecastError, PublishError
from pipeline.publish.hub import HF_TARGET, hub_errors, hub_token, hub_tree
from pipeline.publish.index import INDEX_FILE, MAX_INDEX_BYTES
from pipeline.publish.lease import LEASE_FILE, target_lease
from pipeline.sources.download import auth_headers, hub_endpoint

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

    def commit(
        self,
        folder: Path,
        adds: list[str],
        deletes: list[str],
        message: str,
        on_upload: OnUpload,
        expect_index: bytes | None,
    ) -> str | None: ...


def _name(target: str, rel: str) -> str:
    return safe_relpath(rel, f"{target}: file name")


def _moved(target: str) -> PublishError:
    return PublishError(
        f"{target}: {INDEX_FILE} changed since this run read it (another run committed "
        "there); this batch was not committed, run again to publish from the new state"
    )


class HubRemote:
    """A HuggingFace dataset repo, through the ``huggingface_hub`` client (reads of single
    files and ranges go to its ``resolve`` URLs at the revision the run read, with the token
    only for the hub's origin)."""

    def __init__(self, repo_id: str, private: bool = False) -> None:
        from huggingface_hub import HfApi

        self.repo_id = repo_id
        self.private = private
        self.target = f"hf://datasets/{repo_id}"
        self.token = hub_token()
        self.endpoint = hub_endpoint()
        self.api = HfApi(endpoint=self.endpoint, token=self.token)
        self.parent: str | None = None  # the revision read, then our last commit
        self.exists: bool | None = None  # learnt from the snapshot

    def _errors(self) -> Any:
        return hub_errors(self.target, self.token, self.endpoint)

    def _get(self, rel: str, headers: dict[str, str] | None = None, stream: bool = False) -> Any:
        import requests

        rel = _name(self.target, rel)
        revision = self.parent or "main"
        url = f"{self.endpoint}/datasets/{self.repo_id}/resolve/{revision}/{quote(rel)}"
        try:
            r = requests.get(
                url, headers={**auth_headers(url), **(headers or {})}, timeout=60, stream=True
            )
        except requests.RequestException as exc:
            raise PublishError(
                f"{self.target}: cannot reach the hub at {self.endpoint} to read {rel} "
                f"({exc.__class__.__name__})"
            ) from None
        if r.status_code == 404:
            r.close()
            return None
        if r.status_code >= 400:
            r.close()
            raise PublishError(f"{self.target}: reading {rel} gave HTTP {r.status_code}")
        return r

    def read(self, rel: str, limit: int = MAX_INDEX_BYTES) -> bytes | None:
        r = self._get(rel, stream=True)
        if r is None:
            return None
        with r:
            data = r.raw.read(limit + 1, decode_content=True)
        if len(data) > limit:
            raise PublishError(f"{self.target}: {rel} is larger than {limit:,} bytes")
        return bytes(data)

    def read_range(self, rel: str, start: int, end: int) -> bytes:
        r = self._get(rel, {"Range": f"bytes={start}-{end - 1}"}, stream=True)
        if r is None:
            raise PublishError(f"{self.target}: {rel} is listed in the index but not in the repo")
        with r:
            if r.status_code != 206:
                raise PublishError(
                    f"{self.target}: reading bytes {start}-{end - 1} of {rel}: the server "
                    f"answered HTTP {r.status_code} instead of a range"
                )
            data = r.raw.read(end - start + 1, decode_content=True)
        if len(data) != end - start:
            raise PublishError(f"{self.target}: {rel} is shorter than the index says")
        return bytes(data)

    def download(self, rel: str, dest: Path) -> Path:
        r = self._get(rel, stream=True)
        if r is None:
            raise PublishError(f"{self.target}: {rel} is listed in the index but not in the repo")
        part = dest.with_name(dest.name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        with r, open(part, "wb") as f:
            for block in r.iter_content(1 << 20):
                f.write(block)
        os.replace(part, dest)
        return dest

    def snapshot(self) -> tuple[dict[str, RemoteFile], bytes | None]:
        """The repo's files and its index, both at the head revision, which becomes the
        parent of this run's first commit."""
        from huggingface_hub.errors import RepositoryNotFoundError

        with self._errors():
            try:
                head = self.api.dataset_info(self.repo_id).sha
            except RepositoryNotFoundError:
                self.exists, self.parent = False, None
                return {}, None
            self.exists, self.parent = True, head
            tree = hub_tree(self.api, self.repo_id, revision=head) or {}
        files = {
            p: RemoteFile(
                int(f.size) if f.size is not None else None,
                f.lfs.sha256 if f.lfs else None,
                None if f.lfs else f.blob_id,
            )
            for p, f in tree.items()
        }
        return files, self.read(INDEX_FILE) if INDEX_FILE in files else None

    def file_sha256(self, rel: str, entry: RemoteFile) -> str | None:
        """Stated by the hub for LFS files; small files (a blob id only) are read."""
        if entry.sha256 is not None:
            return entry.sha256
        r = self._get(rel, stream=True)
        if r is None:
            return None
        h = hashlib.sha256()
        with r:
            for block in r.iter_content(1 << 20):
                h.update(block)
        return h.hexdigest()

    def commit(
        self,
        folder: Path,
        adds: list[str],
        deletes: list[str],
        message: str,
        on_upload: OnUpload,
        expect_index: bytes | None,
    ) -> str | None:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        if not adds and not deletes:
            return None
        with self._errors():
            if self.exists is None:
                self.snapshot()
            if not self.exists:
                self.api.create_repo(
                    self.repo_id, repo_type="dataset", private=self.private, exist_ok=True
                )
                # whoever created it first: its head is our parent, and it holds no index
                _, index = self.snapshot()
                if index != expect_index:
                    raise _moved(self.target)
            ops: list[Any] = []
            for rel in adds:
                rel = _name(self.target, rel)
                op = CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(folder / rel))
                if rel.endswith(".tacozip"):  # the big files go up one by one, as LFS objects
                    on_upload(rel)
                    self.api.preupload_lfs_files(self.repo_id, additions=[op], repo_type="dataset")
                ops.append(op)
            ops += [CommitOperationDelete(path_in_repo=_name(self.target, p)) for p in deletes]
            on_upload("")  # everything is uploaded: the commit follows
            info = self.api.create_commit(
                self.repo_id,
                operations=ops,
                commit_message=message,
                repo_type="dataset",
                parent_commit=self.parent,
            )
        self.parent, self.exists = info.oid, True
        return str(info.oid)


class FolderRemote:
    """A local folder or any fsspec URL."""

    def __init__(self, target: str) -> None:
        import fsspec

        self.target = target
        self.fs, root = fsspec.core.url_to_fs(target)
        self.root = root.rstrip("/")

    def _path(self, rel: str) -> str:
        return f"{self.root}/{_name(self.target, rel)}"

    def read(self, rel: str, limit: int = MAX_INDEX_BYTES) -> bytes | None:
        path = self._path(rel)
        try:
            with self.fs.open(path, "rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            return None
        except Exception as exc:  # every backend raises its own types
            raise PublishError(f"{self.target}: cannot read {rel} ({exc})") from exc
        if len(data) > limit:
            raise PublishError(f"{self.target}: {rel} is larger than {limit:,} bytes")
        return bytes(data)

    def read_range(self, rel: str, start: int, end: int) -> bytes:
        try:
            data = bytes(self.fs.cat_file(self._path(rel), start=start, end=end))
        except Exception as exc:
            raise PublishError(f"{self.target}: cannot read {rel} ({exc})") from exc
        if len(data) != end - start:
            raise PublishError(f"{self.target}: {rel} is shorter than the index says")
        return data

    def download(self, rel: str, dest: Path) -> Path:
        part = dest.with_name(dest.name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.fs.get_file(self._path(rel), str(part))
        except Exception as exc:
            raise PublishError(f"{self.target}: cannot read {rel} ({exc})") from exc
        os.replace(part, dest)
        return dest

    def listing(self) -> dict[str, RemoteFile]:
        if not self.fs.exists(self.root):
            return {}
        found = self.fs.find(self.root, detail=True)
        prefix = self.root + "/"
        out = {}
        for p, info in found.items():
            rel = str(p).removeprefix(prefix)
            if rel.endswith(".part") or rel.startswith(LEASE_FILE):
                continue
            size = info.get("size")
            out[rel] = RemoteFile(int(size) if size is not None else None)
        return out

    def snapshot(self) -> tuple[dict[str, RemoteFile], bytes | None]:
        return self.listing(), self.read(INDEX_FILE)

    def file_sha256(self, rel: str, entry: RemoteFile) -> str | None:
        h = hashlib.sha256()
        try:
            with self.fs.open(self._path(rel), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise PublishError(f"{self.target}: cannot read {rel} ({exc})") from exc
        return h.hexdigest()

    def stamp(self, rel: str) -> str | None:
        """What changes when the file is rewritten (size and modification time), for a
        checksum cache; None where the backend states neither."""
        try:
            info = self.fs.info(self._path(rel))
        except Exception:
            return None
        mark = [info.get(k) for k in ("size", "mtime", "LastModified", "ETag", "created")]
        return repr(mark) if any(v is not None for v in mark[1:]) else None

    def commit(
        self,
        folder: Path,
        adds: list[str],
        deletes: list[str],
        message: str,
        on_upload: OnUpload,
        expect_index: bytes | None,
    ) -> str | None:
        if not adds and not deletes:
            return None
        order = sorted(adds, key=lambda rel: (rel == INDEX_FILE, not rel.endswith(".tacozip")))
        with target_lease(self.fs, self.root, self.target) as lease:
            if self.read(INDEX_FILE) != expect_index:
                raise _moved(self.target)
            try:
                for rel in order:  # the index last: it is what makes the batch count
                    if rel == INDEX_FILE:
                        on_upload("")
                    elif rel.endswith(".tacozip"):
                        on_upload(rel)
                    lease.renew()
                    dest = self._path(rel)
                    self.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
                    self.fs.put_file(str(folder / rel), f"{dest}.part")
                    self.fs.mv(f"{dest}.part", dest)
                for rel in deletes:
                    if self.fs.exists(self._path(rel)):
                        self.fs.rm(self._path(rel))
            except CubecastError:
                raise
            except Exception as exc:  # each backend has its own errors
                raise PublishError(f"{self.target}: cannot write ({exc})") from exc
        index = folder / INDEX_FILE
        return hashlib.sha256(index.read_bytes()).hexdigest()[:12] if index.is_file() else None


def open_remote(target: str, private: bool = False) -> Remote:
    """``hf://datasets/ORG/NAME``, a local folder, or any fsspec URL."""
    m = HF_TARGET.match(target)
    if m:
        return HubRemote(m["repo"], private)
    if target.startswith("hf://"):
        raise PublishError(f"{target}: expected hf://datasets/ORG/NAME")
    if "://" not in target:
        target = str(Path(target).resolve())
    return FolderRemote(target)
