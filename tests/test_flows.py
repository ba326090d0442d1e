"""The publish-dataset flow under prefect_test_harness, on Dask, and deployed on a real
Prefect server driven by the Prefect CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from itertools import takewhile
from pathlib import Path

import pytest
import tomli_w
from prefect.testing.utilities import prefect_test_harness

from flows.publish_dataset import publish_dataset
from pipeline.sources.twins import write_deepextremecubes, write_dynamicearthnet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("twins")
    write_dynamicearthnet(root / "den", cubes=2, frames=24, size=64, progress=False)
    write_deepextremecubes(root / "dec", cubes=2, frames=20, size=32, progress=False)
    return {"dynamicearthnet": root / "den", "deepextremecubes": root / "dec"}


def _encode_states() -> list[str]:
    """States of the encode tasks of the latest flow run (runs here are sequential)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = sorted(client.read_task_runs(), key=lambda r: r.created)
    return [r.state_name for r in runs if r.name.startswith("encode_cube")][-2:]


@pytest.mark.parametrize("name", ["dynamicearthnet", "deepextremecubes"])
def test_flow_publishes_twins_and_rerun_hits_cache(name, twins, tmp_path, harness):
    out, target = tmp_path / "out", tmp_path / "published"
    kwargs = dict(
        recipe=name, source=str(twins[name]), out=str(out), target=str(target), incremental=False
    )
    result = publish_dataset(**kwargs)
    assert result["verified"] and result["uploaded"]
    assert (target / "README.md").is_file() and (target / "verification.json").is_file()
    assert list(target.glob("*.tacozip"))
    assert _encode_states() == ["Completed", "Completed"]

    again = publish_dataset(**kwargs)
    assert again["uploaded"] == [] and sorted(again["unchanged"]) == sorted(result["uploaded"])
    assert _encode_states() == ["Cached", "Cached"]


def test_failing_verification_fails_the_flow_and_publishes_nothing(twins, tmp_path, harness):
    data = tomllib.loads((ROOT / "datasets" / "dynamicearthnet.toml").read_text())
    data["verify"]["psnr_min"] = 90.0
    strict = tmp_path / "strict.toml"
    strict.write_bytes(tomli_w.dumps(data).encode())
    target = tmp_path / "published"
    state = publish_dataset(
        recipe=str(strict),
        source=str(twins["dynamicearthnet"]),
        out=str(tmp_path / "out"),
        target=str(target),
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(Exception, match="90.00 dB required"):
        state.result()
    assert not target.exists()


def test_flow_on_dask_local_cluster(twins, tmp_path, harness):
    result = publish_dataset(
        recipe="dynamicearthnet",
        source=str(twins["dynamicearthnet"]),
        out=str(tmp_path / "out"),
        target=str(tmp_path / "published"),
        runner="dask",
        workers=2,
    )
    assert result["verified"] and (tmp_path / "published" / "README.md").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_deployment_runs_on_a_real_prefect_server(twins, tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONFAULTHANDLER": "1",
    }
    env.pop("PREFECT_API_URL", None)
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "server", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while "serving publish-dataset/" not in (tmp_path / "server.log").read_text():
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(1)
        api = f"http://127.0.0.1:{port}/api"
        printed = _printed_commands((tmp_path / "server.log").read_text())
        assert printed[0] == f"export PREFECT_API_URL={api}"
        assert "prefect deployment run 'publish-dataset/publish-dynamicearthnet'" in printed
        out, target = tmp_path / "out", tmp_path / "published"
        params = f"-p source={twins['dynamicearthnet']} -p out={out} -p target={target}"
        params += " -p cubes=1"  # one cube is enough to see the served deployment run
        # the printed lines, pasted into a shell as they are (plus --watch and -p)
        command = next(line for line in printed if line.endswith("publish-dynamicearthnet'"))
        script = f"{printed[0]}\n{command} --watch {params}"
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        run = subprocess.run(
            ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=400
        )
        server_log = (tmp_path / "server.log").read_text()
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:] + server_log[-4000:]
        assert "Completed" in run.stdout
        assert list(target.glob("*.tacozip")) and (target / "README.md").is_file()
        assert "PASS" in (target / "REPORT.md").read_text()
        _trigger_refuses_then_runs(env | {"PREFECT_API_URL": api}, params.split())
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def _printed_commands(log: str) -> list[str]:
    """The lines `cubecast server` prints for running its deployments, without comments."""
    block = log.split("To run one now", 1)[1].splitlines()[1:]
    lines = [line.strip() for line in takewhile(lambda x: x.startswith("    "), block)]
    return [line for line in lines if not line.startswith("#")]


def _trigger_refuses_then_runs(env: dict[str, str], params: list[str]) -> None:
    """`cubecast trigger` on the served deployment: a wrong name or parameter is refused
    before any run is created; then a watched run (cached by the first one) completes."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    def trigger(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "pipeline.cli", "trigger", *args]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)

    def runs() -> int:
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
            with get_client(sync_client=True) as client:
                return sum(r.deployment_id is not None for r in client.read_flow_runs())

    before = runs()
    r = trigger("nosuch", "--watch")
    assert r.returncode == 2 and "no deployment publish-dataset/publish-nosuch" in r.stderr
    r = trigger("dynamicearthnet", "--watch", "-p", "nosuch=1")
    assert r.returncode == 2 and "takes no parameter nosuch" in r.stderr, r.stderr
    assert runs() == before
    r = trigger("dynamicearthnet", "--watch", "--timeout", "300", *params)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Completed after" in r.stdout and runs() == before + 1


def test_unreachable_dask_scheduler_is_one_line_before_anything_runs():
    from flows.publish_dataset import check_scheduler, task_runner
    from pipeline.errors import CubecastError

    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    with pytest.raises(CubecastError) as err:
        task_runner("dask", 2, address)
    message = str(err.value)
    assert message.startswith(f"Dask scheduler {address} not reachable (") and "\n" not in message
    assert message.endswith("nothing encoded or published")
    with pytest.raises(CubecastError, match="not reachable .no host:port"):
        check_scheduler("tcp://127.0.0.1")
    with socket.socket() as s:  # something answers: the task runner is made
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert task_runner("dask", 2, f"tcp://127.0.0.1:{s.getsockname()[1]}") is not None
