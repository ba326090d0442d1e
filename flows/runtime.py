"""One Prefect API for a whole command: the configured server, or one temporary local server.

Without ``PREFECT_API_URL`` Prefect starts an ephemeral server on first use, with a 20 s
start-up limit, and so does every worker process of a process pool. On a loaded 2-core
machine a cold start (empty ``PREFECT_HOME``: database migrations) takes longer than that.
Here one temporary server is started before the flow, given a limit that fits (120 s), and
its URL is exported so the flow and every worker process talk to that one server.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.errors import CubecastError

STARTUP_TIMEOUT_S = 120
TELEMETRY_OFF = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def configured_api() -> str | None:
    """The API URL from the environment or Prefect's profile, if any."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


@contextmanager
def prefect_api(timeout: float = STARTUP_TIMEOUT_S) -> Iterator[str]:
    """Yield the API URL the command's flows use; start and stop a local one if none is set."""
    for k, v in TELEMETRY_OFF.items():
        os.environ.setdefault(k, v)
    # belt and braces: anything that still starts an ephemeral server gets the same limit
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(int(timeout)))
    api = configured_api()
    if api:
        yield api
        return
    from prefect.context import refresh_global_settings_context
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = SubprocessASGIServer(port=_free_port())
    t0 = time.monotonic()
    try:
        server.start(timeout=int(timeout))
    except Exception as exc:  # Prefect raises RuntimeError/httpx errors; name what failed
        server.stop()
        waited = time.monotonic() - t0
        raise CubecastError(
            f"temporary Prefect server on {server.address}: not ready after {waited:.0f} s "
            f"({str(exc).splitlines()[0][:200]})"
        ) from exc
    # Worker processes inherit the environment; Prefect's own background threads (events,
    # logs) read the global settings, which were loaded before this URL existed: refresh
    # them too, or those threads start yet another ephemeral server.
    os.environ["PREFECT_API_URL"] = server.api_url
    refresh_global_settings_context()
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        _drain_workers()
        os.environ.pop("PREFECT_API_URL", None)
        refresh_global_settings_context()
        server.stop()


def _drain_workers() -> None:
    """Send the logs and events still queued before the server goes away; otherwise the
    process hangs at exit retrying a server that is gone (Prefect's test harness does the
    same before it stops its server)."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:  # the worker was never started
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    run_coro_as_sync(drain())
