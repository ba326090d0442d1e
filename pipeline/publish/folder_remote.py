"""A local folder or any fsspec URL as incremental publishing sees it (see
:mod:`pipeline.publish.remote`): commits under the target's lease."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pipeline.errors import CubecastError, PublishError
from pipeline.publish.index import INDEX_FILE, MAX_INDEX_BYTES
from pipeline.publish.lease import LEASE_FILE, target_lease
from pipeline.publish.remote import OnUpload, RemoteFile, moved, name_of


class FolderRemote:
    """A local folder or any fsspec URL."""

    def __init__(self, target: str) -> None:
        import fsspec

        self.target = target
        self.fs, root = fsspec.core.url_to_fs(target)
        self.root = root.rstrip("/")

    def _path(self, rel: str) -> str:
        return f"{self.root}/{name_of(self.target, rel)}"

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
                raise moved(self.target)
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
