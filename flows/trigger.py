"""Trigger a deployment on a running Prefect server and watch it, failing fast.

Prefect's own ``prefect deployment run NAME --watch`` without ``PREFECT_API_URL`` starts a
throwaway server on the local SQLite database, queues the run there and waits forever:
nothing serves that server, and the next ``cubecast server`` (same database) runs the stale
run later. Here a missing URL, an unreachable server, an unknown deployment and one that
nothing serves are each refused in seconds, before any flow run is created, as is a
deployment whose parameters are not the flow's (stale: ``cubecast deploy``); a watch ends
at its deadline or when the server stays unreachable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from pipeline.errors import CubecastError

FLOW_NAME = "publish-dataset"
REQUEST_TIMEOUT_S = 10.0
READY_WAIT_S = 20.0  # a just-started `cubecast server` polls (and so is READY) within 10 s
UNREACHABLE_S = 30.0
NO_API = (
    "PREFECT_API_URL is not set, so there is no Prefect server to run on (the prefect CLI "
    "would start a throwaway one and wait forever): start one with `cubecast server` and "
    "copy the `export PREFECT_API_URL=...` line it prints"
)


def deployment_name(name: str) -> str:
    """A recipe name means its deployment ``publish-dataset/publish-<recipe>``; a name with
    a ``/`` is already ``<flow>/<deployment>``."""
    return name if "/" in name else f"{FLOW_NAME}/publish-{name}"


def require_api() -> str:
    """The configured API URL (environment or Prefect profile), or one line saying how to get
    one: never Prefect's ephemeral fallback."""
    from flows.runtime import configured_api

    api = configured_api()
    if not api:
        raise CubecastError(NO_API)
    return api


@contextmanager
def api_client(api: str) -> Iterator[Any]:
    """A sync Prefect client on ``api`` with short timeouts and no retries: the retry and
    deadline policy is ours (Prefect's client retries a lost server for minutes)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_CLIENT_MAX_RETRIES: 0}):
        with get_client(sync_client=True, httpx_settings={"timeout": REQUEST_TIMEOUT_S}) as c:
            yield c


def served_deployment(client: Any, api: str, name: str, queue_unserved: bool = False) -> Any:
    """The deployment, once the server answers, it exists and something polls it (a serve
    process or a worker marks it READY); otherwise one line, and no run is created."""
    from prefect.client.schemas.objects import DeploymentStatus
    from prefect.exceptions import ObjectNotFound

    failure = client.api_healthcheck()
    if failure is not None:
        raise CubecastError(
            f"Prefect API {api} (PREFECT_API_URL) is not reachable "
            f"({type(failure).__name__}): start a server with `cubecast server`"
        )
    try:
        dep = client.read_deployment_by_name(name)
    except ObjectNotFound:
        raise CubecastError(
            f"no deployment {name} on {api}: `cubecast server` serves "
            f"{FLOW_NAME}/publish-<recipe> (see `prefect deployment ls`)"
        ) from None
    deadline = time.monotonic() + READY_WAIT_S
    while not queue_unserved and dep.status == DeploymentStatus.NOT_READY:
        if time.monotonic() > deadline:
            raise CubecastError(
                f"nothing serves {name} on {api} (no serve process or worker polled it in the "
                "last minute): start `cubecast server`, or pass --queue-unserved to queue the "
                "run for a later one"
            )
        time.sleep(2)
        dep = client.read_deployment_by_name(name)
    return dep


def refuse_stale(deployment: Any, name: str) -> None:
    """A ``publish-dataset`` deployment whose parameters are not the flow's as this code
    defines them (made before a parameter was added, removed or changed) is refused: its
    runs would take the old parameters."""
    if not name.startswith(f"{FLOW_NAME}/"):
        return
    from prefect.utilities.callables import parameter_schema

    from flows.deploy import schema_drift
    from flows.publish_dataset import publish_dataset

    schema = parameter_schema(publish_dataset).model_dump_for_openapi()
    drift = schema_drift(deployment.parameter_openapi_schema, schema)
    if drift:
        raise CubecastError(
            f"{name} is stale ({'; '.join(drift)}): bring it up to date with `cubecast deploy` "
            "(work pool) or by restarting `cubecast server`"
        )


def create_run(client: Any, deployment: Any, parameters: dict[str, Any]) -> Any:
    """A flow run of ``deployment``; a parameter the flow does not take is refused first (the
    run would fail on it only once something picks it up)."""
    known = set((deployment.parameter_openapi_schema or {}).get("properties", {}))
    unknown = sorted(set(parameters) - known)
    if known and unknown:
        raise CubecastError(
            f"{deployment.name} takes no parameter {', '.join(unknown)} "
            f"(it takes {', '.join(sorted(known))})"
        )
    return client.create_flow_run_from_deployment(deployment.id, parameters=parameters)


def trigger(
    name: str,
    parameters: dict[str, Any],
    watch: bool = False,
    timeout: float = 6 * 3600,
    queue_unserved: bool = False,
    echo: Callable[[str], None] = print,
) -> Any:
    """Create one run of deployment ``name`` on the configured server (every refusal comes
    before it is created); with ``watch`` wait for its final state and return it."""
    api = require_api()
    full = deployment_name(name)
    with api_client(api) as client:
        dep = served_deployment(client, api, full, queue_unserved)
        refuse_stale(dep, full)
        run = create_run(client, dep, parameters)
        echo(f"created flow run {run.name} ({run.id}) of {full} on {api}")
        return watch_run(client, run.id, timeout, echo) if watch else None


def watch_run(
    client: Any,
    run_id: UUID,
    timeout: float,
    echo: Callable[[str], None] = print,
    poll: float = 2.0,
    unreachable: float = UNREACHABLE_S,
) -> Any:
    """Poll the run until a final state and return it; give up with one line at the deadline
    or once the server has not answered for ``unreachable`` seconds (the run itself stays on
    the server either way: the message says how to look at it or cancel it)."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    start = last_ok = time.monotonic()
    seen = ""
    while True:
        now = time.monotonic()
        try:
            run = client.read_flow_run(run_id)
        except (httpx.TransportError, PrefectHTTPStatusError) as exc:
            if isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code < 500:
                raise
            if now - last_ok > unreachable:
                raise CubecastError(
                    f"Prefect API lost: no answer for {now - last_ok:.0f} s while watching flow "
                    f"run {run_id} ({type(exc).__name__}); it may still run: "
                    f"`prefect flow-run inspect {run_id}` once the server is back"
                ) from None
        else:
            last_ok = now
            state = run.state
            if state is not None and state.name != seen:
                seen = state.name
                echo(f"{run.name}: {seen} after {now - start:.0f} s")
            if state is not None and state.is_final():
                return state
        if now - start > timeout:
            raise CubecastError(
                f"flow run {run_id} not finished after {timeout:.0f} s (--timeout), last state "
                f"{seen or 'unknown'}; it stays on the server: `prefect flow-run cancel {run_id}`"
            )
        time.sleep(poll)
