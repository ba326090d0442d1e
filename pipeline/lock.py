"""One writer per output folder.

Two ``cubecast pack`` runs into one folder would overwrite each other's staged cubes and
shards and leave a mix of both settings. The lock is an ``flock`` on ``.cubecast.lock`` in
the folder: the kernel drops it when the holder exits, however it exits, so a killed run
never leaves a stale lock. It is re-entrant within a process (the CLI, the build functions
and the flow may each take it around the same work).
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ParamSpec, TypeVar

from pipeline.errors import BusyError

LOCK_FILE = ".cubecast.lock"
P = ParamSpec("P")
R = TypeVar("R")
# temporary folders of killed runs, by place in an output folder: packing's work folders,
# and in staging every hidden folder (encoder spools, half-written staged cubes)
STALE = {".": (".pack-", ".cubecast-spool-"), ".work/staging": (".",)}
_guard = threading.Lock()
_held: dict[Path, list[int]] = {}  # folder -> [fd, depth, pid]


@contextmanager
def folder_lock(folder: str | os.PathLike[str], what: str = "cubecast pack") -> Iterator[Path]:
    """Hold ``folder`` for this process, or fail at once naming the folder."""
    import fcntl

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    key = path.resolve()
    with _guard:
        held = _held.get(key)
        if held is not None and held[2] == os.getpid():
            held[1] += 1
        else:
            fd = os.open(key / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                who = f" (pid {owner})" if owner.isdigit() else ""
                raise BusyError(
                    f"{folder}: another {what} is writing to this folder{who}; wait for it "
                    "to finish or use another output folder"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            _held[key] = [fd, 1, os.getpid()]
    try:
        yield path
    finally:
        with _guard:
            held = _held[key]
            held[1] -= 1
            if held[1] == 0:
                del _held[key]
                fcntl.flock(held[0], fcntl.LOCK_UN)
                os.close(held[0])


def probe_lock(folder: str | os.PathLike[str], what: str = "cubecast pack") -> None:
    """Fail now, before hours of encoding, if another run holds ``folder``; the real lock
    is taken where the folder is written. Creates nothing."""
    if (Path(folder) / LOCK_FILE).is_file():
        with folder_lock(folder, what):
            pass


def clean_stale(folder: str | os.PathLike[str], prefixes: tuple[str, ...]) -> list[Path]:
    """Remove temporary folders that killed runs left in ``folder`` (call under the lock)."""
    removed = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for p in sorted(root.iterdir()):
        if p.is_dir() and not p.is_symlink() and p.name.startswith(prefixes):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def holds_output_folder(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn(x, out, ...)`` holding ``out``'s lock, after clearing the temporary folders
    that killed runs left there (:data:`STALE`)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        out = Path(kwargs["out"] if "out" in kwargs else args[1])  # type: ignore[arg-type]
        with folder_lock(out):
            for sub, prefixes in STALE.items():
                clean_stale(out / sub, prefixes)
            return fn(*args, **kwargs)

    return wrapper
