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
        from prefect import serve
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api}):
            deps = deployments()
            names = ", ".join(f"publish-dataset/{d.name}" for d in deps)
            print(f"serving {names}", flush=True)
            serve(*deps)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
