"""A publish target as incremental publishing sees it: read a file or a byte range, list the
files, and commit a batch of additions and deletions.

On the hub a batch is one commit (shards pre-uploaded as LFS objects first, then shards,
index, ``.tacocat`` and card in a single ``create_commit``), so readers see all of it or
none of it; later commits name the previous one as parent, so a concurrent run's commit
fails instead of being overwritten. On a folder or fsspec target each file is written under
a temporary name and renamed, the index last: a killed batch leaves at most shards that no
index names, which the next commit deletes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from pipeline.errors import PublishError
from pipeline.publish.hub import HF_TARGET, hub_errors, hub_token, hub_tree
from pipeline.publish.index import INDEX_FILE
from pipeline.sources.download import auth_headers, hub_endpoint

OnUpload = Callable[[str], None]


class Remote(Protocol):
    target: str

    def read(self, rel: str) -> bytes | None: ...

    def read_range(self, rel: str, start: int, end: int) -> bytes: ...

    def download(self, rel: str, dest: Path) -> Path: ...

    def listing(self) -> dict[str, str]: ...

    def commit(
        self, folder: Path, adds: list[str], deletes: list[str], message: str, on_upload: OnUpload
    ) -> str | None: ...


class HubRemote:
    """A HuggingFace dataset repo, through the ``huggingface_hub`` client (reads of single
    files and ranges go to its ``resolve`` URLs, with the token only for the hub's origin)."""

    def __init__(self, repo_id: str, private: bool = False) -> None:
        from huggingface_hub import HfApi

        self.repo_id = repo_id
        self.private = private
        self.target = f"hf://datasets/{repo_id}"
        self.token = hub_token()
        self.endpoint = hub_endpoint()
        self.api = HfApi(endpoint=self.endpoint, token=self.token)
        self.parent: str | None = None  # our last commit: the next one must follow it
        self.exists: bool | None = None  # learnt from the listing

    def _errors(self) -> Any:
        return hub_errors(self.target, self.token, self.endpoint)

    def _get(self, rel: str, headers: dict[str, str] | None = None, stream: bool = False) -> Any:
        import requests

        url = f"{self.endpoint}/datasets/{self.repo_id}/resolve/main/{quote(rel)}"
        try:
            r = requests.get(
                url, headers={**auth_headers(url), **(headers or {})}, timeout=60, stream=stream
            )
        except requests.RequestException as exc:
            raise PublishError(
                f"{self.target}: cannot reach the hub at {self.endpoint} to read {rel} "
                f"({exc.__class__.__name__})"
            ) from None
        if r.status_code == 404:
            return None
        if r.status_code >= 400:
            raise PublishError(f"{self.target}: reading {rel} gave HTTP {r.status_code}")
        return r

    def read(self, rel: str) -> bytes | None:
        r = self._get(rel)
        return None if r is None else r.content

    def read_range(self, rel: str, start: int, end: int) -> bytes:
        r = self._get(rel, {"Range": f"bytes={start}-{end - 1}"})
        if r is None:
            raise PublishError(f"{self.target}: {rel} is listed in the index but not in the repo")
        data = r.content if r.status_code == 206 else r.content[start:end]
        if len(data) != end - start:
            raise PublishError(f"{self.target}: {rel} is shorter than the index says")
        return data

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

    def listing(self) -> dict[str, str]:
        """Path -> content id (LFS SHA-256 or git blob id) of every file in the repo."""
        with self._errors():
            tree = hub_tree(self.api, self.repo_id)
        self.exists = tree is not None
        return {p: (f.lfs.sha256 if f.lfs else f.blob_id) for p, f in (tree or {}).items()}

    def commit(
        self, folder: Path, adds: list[str], deletes: list[str], message: str, on_upload: OnUpload
    ) -> str | None:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        if not adds and not deletes:
            return None
        with self._errors():
            if self.exists is None:
                self.listing()
            if not self.exists:
                self.api.create_repo(
                    self.repo_id, repo_type="dataset", private=self.private, exist_ok=True
                )
            ops: list[Any] = []
            for rel in adds:
                op = CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(folder / rel))
                if rel.endswith(".tacozip"):  # the big files go up one by one, as LFS objects
                    on_upload(rel)
                    self.api.preupload_lfs_files(self.repo_id, additions=[op], repo_type="dataset")
                ops.append(op)
            ops += [CommitOperationDelete(path_in_repo=p) for p in deletes]
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
        return f"{self.root}/{rel}"

    def read(self, rel: str) -> bytes | None:
        try:
            return bytes(self.fs.cat_file(self._path(rel)))
        except FileNotFoundError:
            return None
        except Exception as exc:  # every backend raises its own types
            raise PublishError(f"{self.target}: cannot read {rel} ({exc})") from exc

    def read_range(self, rel: str, start: int, end: int) -> bytes:
        try:
            return bytes(self.fs.cat_file(self._path(rel), start=start, end=end))
        except Exception as exc:
            raise PublishError(f"{self.target}: cannot read {rel} ({exc})") from exc

    def download(self, rel: str, dest: Path) -> Path:
        part = dest.with_name(dest.name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.fs.get_file(self._path(rel), str(part))
        except Exception as exc:
            raise PublishError(f"{self.target}: cannot read {rel} ({exc})") from exc
        os.replace(part, dest)
        return dest

    def listing(self) -> dict[str, str]:
        if not self.fs.exists(self.root):
            return {}
        found = self.fs.find(self.root, detail=True)
        prefix = self.root + "/"
        return {
            str(p).removeprefix(prefix): str(info.get("size"))
            for p, info in found.items()
            if not str(p).endswith(".part")
        }

    def commit(
        self, folder: Path, adds: list[str], deletes: list[str], message: str, on_upload: OnUpload
    ) -> str | None:
        if not adds and not deletes:
            return None
        order = sorted(adds, key=lambda rel: (rel == INDEX_FILE, not rel.endswith(".tacozip")))
        try:
            for rel in order:  # the index last: it is what makes the batch count
                if rel == INDEX_FILE:
                    on_upload("")
                elif rel.endswith(".tacozip"):
                    on_upload(rel)
                dest = self._path(rel)
                self.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(str(folder / rel), f"{dest}.part")
                self.fs.mv(f"{dest}.part", dest)
            for rel in deletes:
                if self.fs.exists(self._path(rel)):
                    self.fs.rm(self._path(rel))
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
