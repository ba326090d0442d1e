"""The encoded cube: a manifest plus named stream files, held in any byte store.

Stores fetch one file at a time, so decoding RGB from a cube on disk, in a tar blob or
behind HTTP range requests reads only the RGB stream's bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from pipeline.errors import CorruptStreamError, ManifestError
from pipeline.manifest import Manifest

MANIFEST_FILE = "manifest.json"


class StreamStore(Protocol):
    def read(self, filename: str) -> bytes: ...


class MemoryStore:
    def __init__(self, files: Mapping[str, bytes]) -> None:
        self.files = dict(files)
        self.reads: list[str] = []

    def read(self, filename: str) -> bytes:
        self.reads.append(filename)
        try:
            return self.files[filename]
        except KeyError:
            raise CorruptStreamError(f"encoded cube is missing file {filename!r}") from None


class FolderStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def read(self, filename: str) -> bytes:
        try:
            return (self.path / filename).read_bytes()
        except FileNotFoundError:
            raise CorruptStreamError(
                f"{self.path}: encoded cube is missing file {filename!r}"
            ) from None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class EncodedCube:
    """Manifest + store.  Stream bytes are checked against the manifest's size and hash."""

    def __init__(self, manifest: Manifest, store: StreamStore, source: str = "<memory>") -> None:
        self.manifest = manifest
        self.store = store
        self.source = source

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

    def read_file(self, filename: str) -> bytes:
        data = self.store.read(filename)
        expected = self._expected(filename)
        if expected is not None:
            nbytes, digest = expected
            if len(data) != nbytes:
                raise CorruptStreamError(
                    f"{self.source}: {filename} has {len(data)} bytes, manifest says {nbytes} "
                    "(truncated or from another cube)"
                )
            if sha256(data) != digest:
                raise CorruptStreamError(
                    f"{self.source}: {filename} does not match its manifest checksum (corrupt "
                    "or from another cube)"
                )
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
        total = sum(s.nbytes for s in m.streams) + len(m.to_json().encode())
        return total + (m.aux.nbytes if m.aux else 0)

    # -- persistence -------------------------------------------------------------------
    def files(self) -> dict[str, bytes]:
        out = {name: self.read_file(name) for name in self.filenames()}
        out[MANIFEST_FILE] = self.manifest.to_json().encode()
        return out

    def to_folder(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically: a sibling temp folder is renamed into place when complete."""
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise FileExistsError(f"{path}: output folder exists and is not empty")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            for name, data in self.files().items():
                (tmp / name).write_bytes(data)
            if path.exists():
                path.rmdir()
            tmp.rename(path)
        except BaseException:
            for f in tmp.glob("*"):
                f.unlink()
            tmp.rmdir()
            raise
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
        manifest = Manifest.from_json(mf.read_bytes(), source=str(mf))
        return cls(manifest, FolderStore(path), source=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> EncodedCube:
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                files = {}
                for m in tar.getmembers():
                    f = tar.extractfile(m)
                    if f is not None:
                        files[m.name] = f.read()
        except (tarfile.TarError, EOFError) as exc:
            raise CorruptStreamError(f"{source}: not an encoded cube archive ({exc})") from exc
        if MANIFEST_FILE not in files:
            raise ManifestError(f"{source}: archive has no {MANIFEST_FILE}")
        manifest = Manifest.from_json(files.pop(MANIFEST_FILE), source=f"{source}:{MANIFEST_FILE}")
        return cls(manifest, MemoryStore(files), source=source)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> EncodedCube:
        p = Path(path)
        if p.is_dir():
            return cls.from_folder(p)
        if p.is_file():
            return cls.from_bytes(p.read_bytes(), source=str(p))
        raise ManifestError(f"{path}: no such encoded cube (folder or .tar)")
