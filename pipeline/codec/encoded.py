"""The encoded cube: a manifest plus named stream files, held in any byte store.

Stores fetch one file at a time, so decoding RGB from a cube on disk, in a tar blob or
behind HTTP range requests reads only the RGB stream's bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from pipeline.codec.manifest import MAX_MANIFEST, Manifest
from pipeline.confine import check_manifest_names, confined, safe_name
from pipeline.errors import CorruptStreamError, ManifestError

MANIFEST_FILE = "manifest.json"
# stored bytes of a manifest (zstd frame overhead over the JSON limit included)
MAX_MANIFEST_FILE = MAX_MANIFEST + (1 << 20)


CHUNK = 1 << 20


class StreamStore(Protocol):
    def read(self, filename: str) -> bytes: ...


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


class MemoryStore:
    def __init__(self, files: Mapping[str, bytes]) -> None:
        self.files = dict(files)
        self.reads: list[str] = []

    def read(self, filename: str) -> bytes:
        safe_name(filename, "stream file")  # the name may be written to disk by to_folder
        self.reads.append(filename)
        try:
            return self.files[filename]
        except KeyError:
            raise CorruptStreamError(f"encoded cube is missing file {filename!r}") from None


class FolderStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def read(self, filename: str) -> bytes:
        return self.file_path(filename).read_bytes()

    def size(self, filename: str) -> int:
        return self.file_path(filename).stat().st_size

    def file_path(self, filename: str) -> Path:
        """The file on disk, so large streams can be decoded or copied without loading them."""
        path = confined(self.path, safe_name(filename, f"{self.path}: stream file"))
        if not path.is_file():
            raise CorruptStreamError(f"{self.path}: encoded cube is missing file {filename!r}")
        return path


class TarStore:
    """The members of an uncompressed tar (``EncodedCube.to_bytes``), read one at a time
    when asked for: only the member headers are read up front. A member that is not a
    plain file, a sparse member (a few bytes that claim gigabytes) and one longer than
    the caller allows are refused before any of its bytes are read."""

    def __init__(self, source: bytes | str | os.PathLike[str], name: str) -> None:
        self._data = source if isinstance(source, bytes) else None
        self._path = None if isinstance(source, bytes) else Path(source)
        self.source = name
        self.members: dict[str, tarfile.TarInfo] = {}
        self.reads: list[str] = []
        try:
            with self._open() as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
                for m in tar:
                    safe_name(m.name, f"{name}: archive member")
                    self.members[m.name] = m  # a later member replaces an earlier one
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise CorruptStreamError(f"{name}: not an encoded cube archive ({exc})") from exc

    def _open(self) -> io.BufferedIOBase:
        if self._data is not None:
            return io.BytesIO(self._data)
        assert self._path is not None
        return open(self._path, "rb")  # noqa: SIM115  (closed by the caller)

    def _member(self, filename: str) -> tarfile.TarInfo:
        m = self.members.get(filename)
        if m is None:
            raise CorruptStreamError(f"{self.source}: encoded cube is missing file {filename!r}")
        if m.issparse() or not m.isreg():
            what = "a sparse member" if m.issparse() else "not a plain file"
            raise CorruptStreamError(f"{self.source}: archive member {filename!r} is {what}")
        return m

    def size(self, filename: str) -> int:
        """The member's length as its header declares it (nothing read)."""
        return self._member(filename).size

    def read(self, filename: str, limit: int | None = None) -> bytes:
        m = self._member(filename)
        self.reads.append(filename)
        if limit is not None and m.size > limit:
            raise CorruptStreamError(
                f"{self.source}: archive member {filename!r} claims {m.size} bytes, more "
                f"than the {limit} it may have"
            )
        with self._open() as fh:
            fh.seek(m.offset_data)
            data = fh.read(m.size)
        if len(data) != m.size:
            raise CorruptStreamError(
                f"{self.source}: archive member {filename!r} is truncated "
                f"({len(data)} of {m.size} bytes)"
            )
        return data


class SpoolStore(FolderStore):
    """A private temporary folder that the encoder writes streams into.

    It is removed when the store is garbage collected, unless ``to_folder`` has moved
    the files out first; the encoded cube never needs to be held in memory.
    """

    def __init__(self, parent: str | os.PathLike[str] | None = None) -> None:
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        super().__init__(tempfile.mkdtemp(prefix=".cubecast-spool-", dir=parent))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.path), True)

    def write(self, filename: str, data: bytes) -> None:
        (self.path / filename).write_bytes(data)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class EncodedCube:
    """Manifest + store.  Stream bytes are checked against the manifest's size and hash."""

    def __init__(self, manifest: Manifest, store: StreamStore, source: str = "<memory>") -> None:
        self.manifest = manifest
        self.store = store
        self.source = source
        self._checked: set[str] = set()

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"<EncodedCube {m.cube_id!r} {m.n_frames}x{m.frame_shape[0]}x{m.frame_shape[1]} "
            f"streams={[s.name for s in m.streams]} {self.nbytes} bytes>"
        )

    def filenames(self) -> list[str]:
        names = [s.file for s in self.manifest.streams]
        if self.manifest.aux:
            names.append(self.manifest.aux.file)
        return names

    def file_path(self, filename: str) -> Path | None:
        """The stream's file on disk after a size and checksum check, or None for stores
        that are not folders (bytes in memory, a tar, a shard over HTTP)."""
        if not isinstance(self.store, FolderStore):
            return None
        path = self.store.file_path(filename)
        if filename not in self._checked:
            expected = self._expected(filename)
            if expected is not None:
                self._check(filename, path.stat().st_size, lambda: file_sha256(path), *expected)
            self._checked.add(filename)
        return path

    def _check(
        self, filename: str, size: int, digest: Callable[[], str], nbytes: int, sha: str
    ) -> None:
        if size != nbytes:
            raise CorruptStreamError(
                f"{self.source}: {filename} has {size} bytes, manifest says {nbytes} "
                "(truncated or from another cube)"
            )
        if digest() != sha:
            raise CorruptStreamError(
                f"{self.source}: {filename} does not match its manifest checksum (corrupt "
                "or from another cube)"
            )

    def read_file(self, filename: str) -> bytes:
        expected = self._expected(filename)
        size = getattr(self.store, "size", None)
        if expected is not None and size is not None:
            # a store that knows a member's length (tar, shard, folder) refuses one of
            # another length before reading it: a sparse or crafted member is never inflated
            got = size(filename)
            if got != expected[0]:
                raise CorruptStreamError(
                    f"{self.source}: {filename} has {got} bytes, manifest says {expected[0]} "
                    "(truncated or from another cube)"
                )
        data = self.store.read(filename)
        if expected is not None:
            self._check(filename, len(data), lambda: sha256(data), *expected)
        return data

    def _expected(self, filename: str) -> tuple[int, str] | None:
        for s in self.manifest.streams:
            if s.file == filename:
                return s.nbytes, s.sha256
        aux = self.manifest.aux
        if aux and aux.file == filename:
            return aux.nbytes, aux.sha256
        return None

    @property
    def nbytes(self) -> int:
        """Encoded size: all streams, aux and the manifest itself."""
        m = self.manifest
        total = sum(s.nbytes for s in m.streams) + len(m.to_bytes())
        return total + (m.aux.nbytes if m.aux else 0)

    # -- persistence -------------------------------------------------------------------
    def files(self) -> dict[str, bytes]:
        out = {name: self.read_file(name) for name in self.filenames()}
        out[MANIFEST_FILE] = self.manifest.to_bytes()
        return out

    def to_folder(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically: a sibling temp folder is renamed into place when complete.

        Files of a spooled cube are hard-linked (or copied across file systems) rather than
        read into memory; afterwards this cube reads from the new folder.
        """
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise FileExistsError(f"{path}: output folder exists and is not empty")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        spooled = isinstance(self.store, SpoolStore)
        try:
            for name in self.filenames():
                src = self.file_path(name)
                if src is None:
                    (tmp / name).write_bytes(self.read_file(name))
                elif spooled:
                    _link_or_copy(src, tmp / name)
                else:
                    shutil.copyfile(src, tmp / name)
            (tmp / MANIFEST_FILE).write_bytes(self.manifest.to_bytes())
            if path.exists():
                path.rmdir()
            tmp.rename(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if spooled:
            self.store = FolderStore(path)
            self.source = str(path)
        return path

    def to_bytes(self) -> bytes:
        """A single uncompressed tar: manifest first, so a reader can stop after it."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            files = self.files()
            for name in [MANIFEST_FILE] + self.filenames():
                info = tarfile.TarInfo(name)
                info.size = len(files[name])
                tar.addfile(info, io.BytesIO(files[name]))
        return buf.getvalue()

    @classmethod
    def from_folder(cls, path: str | os.PathLike[str]) -> EncodedCube:
        path = Path(path)
        mf = path / MANIFEST_FILE
        if not path.is_dir():
            raise ManifestError(f"{path}: not an encoded cube folder")
        if not mf.is_file():
            raise ManifestError(f"{path}: no {MANIFEST_FILE} in encoded cube folder")
        if mf.stat().st_size > MAX_MANIFEST_FILE:
            raise ManifestError(f"{mf}: manifest is larger than {MAX_MANIFEST_FILE >> 20} MiB")
        manifest = Manifest.from_json(mf.read_bytes(), source=str(mf))
        check_manifest_names(manifest, str(mf))
        return cls(manifest, FolderStore(path), source=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> EncodedCube:
        return cls._from_tar(TarStore(data, source), source)

    @classmethod
    def _from_tar(cls, store: TarStore, source: str) -> EncodedCube:
        """The manifest member read (capped), the streams left in the tar until asked for."""
        if MANIFEST_FILE not in store.members:
            raise ManifestError(f"{source}: archive has no {MANIFEST_FILE}")
        raw = store.read(MANIFEST_FILE, limit=MAX_MANIFEST_FILE)
        manifest = Manifest.from_json(raw, source=f"{source}:{MANIFEST_FILE}")
        check_manifest_names(manifest, f"{source}:{MANIFEST_FILE}")
        return cls(manifest, store, source=source)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> EncodedCube:
        p = Path(path)
        if p.is_dir():
            return cls.from_folder(p)
        if p.is_file():
            return cls._from_tar(TarStore(p, str(p)), str(p))
        raise ManifestError(f"{path}: no such encoded cube (folder or .tar)")
