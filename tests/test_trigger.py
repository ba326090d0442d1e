"""`cubecast trigger` fails fast (no server: one line in seconds, no flow run anywhere), its
watch ends at a deadline or when the server is lost, and `cubecast server` prints run
commands that name the whole `<flow>/<deployment>`. The real-server run of those commands
is in test_flows.py (test_deployment_runs_on_a_real_prefect_server)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from uuid import uuid4

import httpx
import pytest

from flows import trigger as trig
from flows.serve import run_commands
from pipeline.errors import CubecastError

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["publish-dataset/publish-dynamicearthnet", "publish-dataset/publish-deepextremecubes"]


def _trigger(tmp_path: Path, api: str | None) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    for key in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE"):
        env.pop(key, None)
    if api:
        env["PREFECT_API_URL"] = api
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "trigger", "dynamicearthnet", "--watch"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return r, time.monotonic() - t0


def test_without_prefect_api_url_it_fails_in_seconds_and_creates_no_run(tmp_path):
    r, seconds = _trigger(tmp_path, None)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert "PREFECT_API_URL" in r.stderr and "cubecast server" in r.stderr
    assert seconds < 30
    # no throwaway server was started, so no database holds a queued run for a later server
    assert not list((tmp_path / "prefect-home").glob("*.db"))


def test_an_unreachable_server_is_refused_in_seconds(tmp_path):
    r, seconds = _trigger(tmp_path, "http://127.0.0.1:9/api")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "not reachable" in r.stderr and "PREFECT_API_URL" in r.stderr
    assert "created flow run" not in r.stdout and seconds < 30


def test_server_banner_commands_name_flow_and_deployment():
    lines = run_commands("http://127.0.0.1:4200/api", NAMES)
    assert lines[0] == "export PREFECT_API_URL=http://127.0.0.1:4200/api"
    assert "prefect deployment run 'publish-dataset/publish-dynamicearthnet'" in lines
    assert "prefect deployment run 'publish-dataset/publish-deepextremecubes'" in lines
    assert "cubecast trigger dynamicearthnet --watch" in lines
    assert not any("[DEPLOYMENT_NAME]" in line for line in lines)
    assert trig.deployment_name("dynamicearthnet") == NAMES[0]
    assert trig.deployment_name("other-flow/x") == "other-flow/x"


class _Client:
    """A stand-in for Prefect's sync client: runs' states, or a lost server."""

    def __init__(self, states: list[str | None], ready: bool = True) -> None:
        self.states = states
        self.ready = ready
        self.created = 0

    def read_flow_run(self, run_id):
        name = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        if name is None:
            raise httpx.ConnectError("connection refused")
        final = name in ("Completed", "Failed")
        state = SimpleNamespace(name=name, is_final=lambda: final)
        return SimpleNamespace(name="brave-otter", state=state)

    def api_healthcheck(self):
        return None

    def read_deployment_by_name(self, name):
        from prefect.client.schemas.objects import DeploymentStatus

        status = DeploymentStatus.READY if self.ready else DeploymentStatus.NOT_READY
        return SimpleNamespace(id=uuid4(), name=name, status=status)


def test_watch_returns_the_final_state():
    client = _Client(["Scheduled", "Running", "Completed"])
    lines: list[str] = []
    state = trig.watch_run(client, uuid4(), timeout=10, echo=lines.append, poll=0.01)
    assert state.name == "Completed"
    seen = [line.split(": ")[1].split()[0] for line in lines]
    assert seen == ["Scheduled", "Running", "Completed"]


def test_watch_stops_at_its_deadline():
    t0 = time.monotonic()
    with pytest.raises(CubecastError, match="not finished after 0 s.*prefect flow-run cancel"):
        trig.watch_run(_Client(["Scheduled"]), uuid4(), timeout=0.3, echo=print, poll=0.05)
    assert time.monotonic() - t0 < 5


def test_watch_stops_when_the_server_is_lost():
    client = _Client(["Running", None])
    with pytest.raises(CubecastError, match="Prefect API lost: no answer"):
        trig.watch_run(client, uuid4(), timeout=60, echo=print, poll=0.05, unreachable=0.3)


def test_a_deployment_nothing_serves_is_refused_before_a_run(monkeypatch):
    monkeypatch.setattr(trig, "READY_WAIT_S", 0.0)
    client = _Client(["Scheduled"], ready=False)
    with pytest.raises(CubecastError, match="nothing serves .*cubecast server"):
        trig.served_deployment(client, "http://x/api", NAMES[0])
    assert trig.served_deployment(client, "http://x/api", NAMES[0], queue_unserved=True)


def test_parameters_read_like_prefects():
    from pipeline.cli_flow import _key_value

    assert _key_value("max_disk=10GB") == ("max_disk", "10GB")
    assert _key_value("incremental=true") == ("incremental", True)
    assert _key_value("workers=4") == ("workers", 4)
    with pytest.raises(CubecastError, match="key=value"):
        _key_value("oops")
