"""A watchdog that cuts the connections of a download once its deadline passes, for servers
that trickle (no single read ever times out)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
import requests.adapters
import urllib3
import urllib3.connection

from pipeline.sources.limits import Deadline

_watched = threading.local()  # sockets of this thread's requests under a watchdog


def _register(sock: socket.socket | None) -> None:
    socks = getattr(_watched, "socks", None)
    if socks is not None and sock is not None:
        socks.append(sock)


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    def getresponse(self, *a: Any, **k: Any) -> Any:
        _register(self.sock)
        return super().getresponse(*a, **k)


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def getresponse(self, *a: Any, **k: Any) -> Any:
        _register(self.sock)
        return super().getresponse(*a, **k)


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *a: Any, **k: Any) -> None:
        super().init_poolmanager(*a, **k)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPPool,
            "https": _WatchedHTTPSPool,
        }


def watched_session() -> requests.Session:
    """A session whose connections :func:`watchdog` can cut: a server that trickles its
    headers (no read ever times out) still meets the deadline."""
    session = requests.Session()
    adapter = _WatchedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


@contextmanager
def watchdog(clock: Deadline) -> Iterator[None]:
    """Shut down the sockets of the requests this thread makes inside the block once
    ``clock``'s deadline passes (re-armed while a pace-based deadline moves on)."""
    socks: list[socket.socket] = []
    done = threading.Event()

    def fire() -> None:
        while not done.wait(max(clock.left(), 0.0)):
            if clock.left() <= 0:
                for sock in socks:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return

    outer = getattr(_watched, "socks", None)
    _watched.socks = socks
    timer = threading.Thread(target=fire, daemon=True)
    timer.start()
    try:
        yield
    finally:
        done.set()
        _watched.socks = outer
