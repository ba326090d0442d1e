"""Deployments ``publish-dataset/publish-<recipe>`` built from the recipes, and a one-step
start: local Prefect server (SQLite on 127.0.0.1) plus a process serving the deployments.

Point at Prefect Cloud or a remote server instead by setting ``PREFECT_API_URL`` (and
``PREFECT_API_KEY``) and starting with ``--no-local-server``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from pipeline.errors import CubecastError
from pipeline.recipe import load_recipe

DATASETS = ("dynamicearthnet", "deepextremecubes")
TELEMETRY_OFF = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def default_parameters(name: str, root: Path) -> dict[str, Any]:
    """The embedded default: a synthetic twin as source, local output and publish folders."""
    return {
        "recipe": name,
        "source": str(root / "twins" / name),
        "out": str(root / "shards" / name),
        "target": str(root / "published" / name),
        "synthesize": True,
    }


def deployments(root: Path | None = None) -> list[Any]:
    from flows.publish_dataset import publish_dataset

    root = (root or Path("out")).resolve()
    deps = []
    for name in DATASETS:
        recipe = load_recipe(name)
        deps.append(
            publish_dataset.to_deployment(
                name=f"publish-{name}",
                cron=recipe.publish.schedule,
                parameters=default_parameters(name, root),
                tags=["cubecast", name],
                description=f"Encode, verify and publish {recipe.taco.title}",
            )
        )
    return deps


def wait_healthy(
    api_url: str, timeout: float = 180.0, proc: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise CubecastError(f"Prefect server exited with code {proc.returncode}")
        try:
            if requests.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise CubecastError(f"{api_url}: Prefect server not healthy after {timeout:.0f} s")


def start_server(host: str, port: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, **TELEMETRY_OFF}
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env)
    api = f"http://{host}:{port}/api"
    wait_healthy(api, proc=proc)
    return proc, api


def run_commands(api: str, names: list[str]) -> list[str]:
    """Copy-pasteable lines that run each served deployment from another shell. Prefect's own
    banner says ``prefect deployment run [DEPLOYMENT_NAME]``, but the name must be the full
    ``<flow>/<deployment>``, and without this server's URL the prefect CLI talks to a
    throwaway server of its own and waits forever."""
    first = names[0].removeprefix("publish-dataset/publish-")
    lines = [f"export PREFECT_API_URL={api}"]
    if os.environ.get("PREFECT_API_KEY"):
        lines.append("# and export PREFECT_API_KEY as in this shell")
    lines += [f"prefect deployment run '{name}'" for name in names]
    lines += [
        "# or wait for it to finish (refused in seconds if no server serves it; --timeout):",
        f"cubecast trigger {first} --watch",
    ]
    return lines


def print_banner(api: str, names: list[str]) -> None:
    """What is served and how to run it, in one write (a reader of the log sees it whole)."""
    lines = [
        f"serving {', '.join(names)}",
        "To run one now (add -p key=value to override a parameter), in another shell:",
        *(f"    {line}" for line in run_commands(api, names)),
    ]
    print("\n".join(lines), flush=True)


def serve_deployments(host: str = "127.0.0.1", port: int = 4200, local_server: bool = True) -> None:
    os.environ.update(TELEMETRY_OFF)
    proc = None
    try:
        if local_server:
            proc, api = start_server(host, port)
            print(f"Prefect server: {api.removesuffix('/api')}", flush=True)
        else:
            api = os.environ.get("PREFECT_API_URL", "")
            if not api:
                raise CubecastError("--no-local-server needs PREFECT_API_URL (and PREFECT_API_KEY)")
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api}):
            _serve(api, deployments())
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _serve(api: str, deps: list[Any]) -> None:
    """``prefect.serve`` with our banner instead of its own (whose run command is wrong):
    printed once the deployments exist on the server, so the commands work at once."""
    import asyncio

    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    runner = Runner(pause_on_shutdown=True)
    for dep in deps:
        runner.add_deployment(dep)
    print_banner(api, [f"{dep.flow_name}/{dep.name}" for dep in deps])
    try:
        asyncio.run(runner.start())
    except (KeyboardInterrupt, TerminationSignal):
        pass
