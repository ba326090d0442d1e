"""Paths that come from data stay inside their root.

Mirror indexes, cube and sample ids, manifest stream names, archive members and recipe
fields are written by someone else; joined unchecked, ``../../x`` or ``/etc/passwd`` would
read or write anywhere. Every such path goes through :func:`confined` (or, for a single
file or folder name, :func:`safe_name`) before it touches the file system.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from pipeline.errors import UnsafePathError


def safe_relpath(rel: str, what: str = "path") -> str:
    """``rel`` as a clean relative POSIX path, or an error naming it: no absolute paths,
    drive letters, backslashes, ``..`` components, NUL bytes or empty names."""
    text = str(rel)
    bad = (
        not text.strip()
        or "\0" in text
        or "\\" in text
        or PurePosixPath(text).is_absolute()
        or PureWindowsPath(text).drive != ""
        or any(part == ".." for part in text.split("/"))
    )
    if bad:
        raise UnsafePathError(f"{what} {text!r}: not a relative path inside its folder")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts:
        raise UnsafePathError(f"{what} {text!r}: names no file")
    return "/".join(parts)


def safe_name(name: str, what: str = "name") -> str:
    """A single file or folder name (an id): no ``/`` and nothing :func:`safe_relpath`
    refuses, nor a leading dot (hidden names are work files here)."""
    clean = safe_relpath(name, what)
    if "/" in clean or clean != str(name) or clean.startswith("."):
        raise UnsafePathError(
            f"{what} {name!r}: must be a plain file name (no '/', no leading '.')"
        )
    return clean


def confined(root: str | os.PathLike[str], rel: str, what: str = "path") -> Path:
    """``root / rel`` resolved, refused unless it stays inside ``root`` (symlinks included)."""
    clean = safe_relpath(rel, what)
    base = Path(root).resolve()
    target = (base / clean).resolve()
    if target != base and not target.is_relative_to(base):
        raise UnsafePathError(f"{what} {rel!r}: leads outside {root} (through a symlink)")
    return Path(root) / clean


def check_manifest_names(manifest: object, source: str) -> None:
    """Every file a manifest names is a plain file name: stream names end up joined to
    folders when a cube is written out or read from disk."""
    names = [s.file for s in getattr(manifest, "streams", [])]
    aux = getattr(manifest, "aux", None)
    if aux is not None:
        names.append(aux.file)
    for name in names:
        safe_name(name, f"{source}: stream file")
