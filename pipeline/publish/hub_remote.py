"""A HuggingFace dataset repo as incremental publishing sees it (see
:mod:`pipeline.publish.remote`): one revision read, every commit naming its parent."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pipeline.errors import PublishError
from pipeline.publish.hub import hub_errors, hub_head, hub_token, hub_tree
from pipeline.publish.index import INDEX_FILE, MAX_INDEX_BYTES
from pipeline.publish.remote import OnUpload, RemoteFile, moved, name_of
from pipeline.sources.hub_auth import auth_headers, hub_endpoint


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

    def _get(self, rel: str, headers: dict[str, str] | None = None) -> Any:
        """A streamed GET of ``rel`` at the revision read (None if it is not there)."""
        import requests

        rel = name_of(self.target, rel)
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
        r = self._get(rel)
        if r is None:
            return None
        with r:
            data = r.raw.read(limit + 1, decode_content=True)
        if len(data) > limit:
            raise PublishError(f"{self.target}: {rel} is larger than {limit:,} bytes")
        return bytes(data)

    def read_range(self, rel: str, start: int, end: int) -> bytes:
        r = self._get(rel, {"Range": f"bytes={start}-{end - 1}"})
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
        r = self._get(rel)
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
        with self._errors():
            head = hub_head(self.api, self.repo_id)
            self.exists, self.parent = head is not None, head
            if head is None:
                return {}, None
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
        r = self._get(rel)
        if r is None:
            return None
        h = hashlib.sha256()
        with r:
            for block in r.iter_content(1 << 20):
                h.update(block)
        return h.hexdigest()

    def stamp(self, rel: str) -> str | None:
        return None  # a file's bytes are named by the listing itself (LFS id or blob id)

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
                    raise moved(self.target)
            ops: list[Any] = []
            for rel in adds:
                rel = name_of(self.target, rel)
                op = CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(folder / rel))
                if rel.endswith(".tacozip"):  # the big files go up one by one, as LFS objects
                    on_upload(rel)
                    self.api.preupload_lfs_files(self.repo_id, additions=[op], repo_type="dataset")
                ops.append(op)
            ops += [CommitOperationDelete(path_in_repo=name_of(self.target, p)) for p in deletes]
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
