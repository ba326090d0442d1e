"""One committer at a time on a folder or fsspec target: a lease file.

Two runs publishing into one folder each read the index, encode, then write shards and the
index. Without a lock the later index overwrites the earlier one and both runs report
success. The lease (``.cubecast-lease.json`` in the target) is taken around a commit; inside
it the committer re-reads the index and gives up if anyone committed since it planned.

A lease is a file created exclusively (``O_EXCL`` on a local folder, mode ``"xb"`` where an
fsspec backend supports it, else written and read back), naming its owner and an expiry. A
holder renews it while it uploads; a lease whose holder died (same host, no such process)
or whose expiry passed is broken by renaming it away, which only one contender wins.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pipeline.errors import BusyError

LEASE_FILE = ".cubecast-lease.json"


def lease_seconds() -> float:
    """How long a lease lasts without renewal (``CUBECAST_LEASE_SECONDS``, default 600)."""
    try:
        return max(1.0, float(os.environ.get("CUBECAST_LEASE_SECONDS", "600")))
    except ValueError:
        return 600.0


def lease_wait() -> float:
    """How long a contender waits for a held lease (``CUBECAST_LEASE_WAIT``, default 60 s)."""
    try:
        return max(0.0, float(os.environ.get("CUBECAST_LEASE_WAIT", "60")))
    except ValueError:
        return 60.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Lease:
    fs: Any
    path: str
    token: str
    target: str
    seconds: float

    def _record(self) -> bytes:
        return json.dumps(
            {
                "token": self.token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "expires": time.time() + self.seconds,
            }
        ).encode()

    def renew(self) -> None:
        """Push the expiry forward; fails if someone broke the lease meanwhile."""
        held = _read(self.fs, self.path)
        if held is None or held.get("token") != self.token:
            raise BusyError(
                f"{self.target}: this run's commit lease was taken over (it ran past "
                f"{self.seconds:.0f} s without renewal); nothing more is written, run again"
            )
        _write(self.fs, self.path, self._record(), exclusive=False)

    def release(self) -> None:
        held = _read(self.fs, self.path)
        if held is not None and held.get("token") == self.token:
            try:
                self.fs.rm(self.path)
            except FileNotFoundError:
                pass


def _local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _read(fs: Any, path: str) -> dict[str, Any] | None:
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw[:4096])
        return data if isinstance(data, dict) else {}
    except ValueError:
        return {}  # half-written by a killed holder: judged by its age


def _write(fs: Any, path: str, data: bytes, exclusive: bool) -> bool:
    """Write ``data`` to ``path``; with ``exclusive``, only if it does not exist yet."""
    if _local(fs):
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
        try:
            fd = os.open(path, flags, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    if exclusive:
        try:
            with fs.open(path, "xb") as f:
                f.write(data)
            return True
        except FileExistsError:
            return False
        except (NotImplementedError, ValueError, TypeError):
            if fs.exists(path):
                return False
    with fs.open(path, "wb") as f:
        f.write(data)
    return True


def _stale(fs: Any, path: str, held: dict[str, Any]) -> bool:
    expires = held.get("expires")
    if isinstance(expires, int | float) and not isinstance(expires, bool):
        if expires < time.time():
            return True
        pid = held.get("pid")
        same_host = held.get("host") == socket.gethostname()
        return bool(same_host and isinstance(pid, int) and pid != os.getpid() and not _alive(pid))
    try:  # unreadable record: stale once older than a lease
        modified = fs.modified(path).timestamp()
    except Exception:
        return True
    return time.time() - modified > lease_seconds()


def _break(fs: Any, path: str) -> None:
    """Move a stale lease away: of several contenders, one rename wins."""
    aside = f"{path}.stale-{uuid.uuid4().hex[:8]}"
    try:
        fs.mv(path, aside)
    except (FileNotFoundError, OSError):
        return
    try:
        fs.rm(aside)
    except FileNotFoundError:
        pass


@contextmanager
def target_lease(fs: Any, root: str, target: str, wait: float | None = None) -> Iterator[Lease]:
    """Hold ``root``'s lease, waiting up to ``wait`` seconds for another holder; else fail in
    one line naming the target and the holder."""
    fs.makedirs(root, exist_ok=True)
    path = f"{root}/{LEASE_FILE}"
    lease = Lease(fs, path, uuid.uuid4().hex, target, lease_seconds())
    deadline = time.monotonic() + (lease_wait() if wait is None else wait)
    delay = 0.05
    while True:
        if _write(fs, path, lease._record(), exclusive=True):
            held = _read(fs, path)
            if held is not None and held.get("token") == lease.token:
                break
        else:
            held = _read(fs, path)
            if held is not None and _stale(fs, path, held):
                _break(fs, path)
                continue
            if time.monotonic() >= deadline:
                who = ""
                if held:
                    who = f" (pid {held.get('pid')} on {held.get('host')})"
                raise BusyError(
                    f"{target}: another cubecast run is committing there{who}; nothing was "
                    "written by this one, run again when it is done"
                )
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    try:
        yield lease
    finally:
        lease.release()
