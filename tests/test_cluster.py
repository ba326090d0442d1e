"""The scale-out path on one machine (issue 27), every piece its own process on loopback,
started as docs/SCALING.md says: ``prefect server start``; a ``process`` work pool and the
deployments of prefect.yaml (``prefect deploy --all``); ``prefect worker start --pool``; a
Dask scheduler and two Dask workers (``dask scheduler``, ``dask worker tcp://...``). Then
``prefect deployment run publish-dataset/publish-dynamicearthnet --watch`` encodes on the
Dask workers and publishes to a folder, and to the hub stand-in; then a deployment older
than the flow's parameters is refused and brought up to date by ``cubecast deploy``.
Every service is stopped by its PID (its process group), also when a test fails
(tests/cluster_services.py starts and stops them)."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.incremental import threads_note
from pipeline.codec.cores import shared_threads
from pipeline.errors import CubecastError
from pipeline.sources.twins import write_dynamicearthnet
from tests.cluster_services import Cluster, running_cluster
from tests.fakehub import FakeHub

TOKEN = "hf_test_secret_token_cluster"
REPO = "cubecast-test/cluster"
CUBES = 4
DEPLOYMENT = "publish-dataset/publish-dynamicearthnet"


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with FakeHub(TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("twin") / "dynamicearthnet"
    write_dynamicearthnet(root, cubes=CUBES, frames=6, size=32, progress=False)
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub) -> Iterator[Cluster]:
    """Server, pool, deployments, worker, scheduler and two workers, as the docs start them."""
    hf = {  # the token comes from a Secret block, as in publish.yml
        "HF_ENDPOINT": hub.url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    with running_cluster(tmp_path_factory.mktemp("cluster"), hf) as cluster:
        yield cluster


def deployment_run(cluster: Cluster, *params: str) -> str:
    """``prefect deployment run ... --watch``, as a shell would run it; its output."""
    cmd = ["prefect", "deployment", "run", DEPLOYMENT, "--watch", "--watch-timeout", "240"]
    cmd += [arg for p in params for arg in ("-p", p)]
    cmd += ["-p", "runner=dask", "-p", f"dask_address={cluster.scheduler}", "-p", f"cubes={CUBES}"]
    return cluster.services.run(*cmd).stdout


def encoded_on(cluster: Cluster, count: int) -> dict[str, str]:
    """Cube -> where its encode task ran, from the task logs on the Prefect server that no
    earlier call read (they reach the server a few seconds after the run ends)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    found: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while len(found) < count and time.monotonic() < deadline:
        with temporary_settings(updates={PREFECT_API_URL: cluster.api}):
            with get_client(sync_client=True) as client:
                logs, offset = [], 0
                while batch := client.read_logs(limit=200, offset=offset):
                    logs, offset = logs + batch, offset + len(batch)
        for log in logs:
            m = re.match(r"encoded (\S+) on dask worker (\S+) \((.*)\)", log.message)
            if m and str(log.id) not in cluster.seen:
                cluster.seen.add(str(log.id))
                found[m[1]] = m[2]
                cluster.threads.add(m[3])
        time.sleep(1)
    return found


def check_published(folder: Path, twin: Path) -> list[str]:
    """Every cube of the twin in exactly one shard, listed by ``.tacocat``, and every sample
    decoded from the shards verifies against its source; returns the cube ids."""
    import tacoreader

    from flows.publish_dataset import _recipe
    from pipeline.build import select_cubes, shards_in, verify_against_sources
    from pipeline.sources import mirror_for

    recipe = _recipe("dynamicearthnet", str(twin), CUBES)  # as the flow reads it (-p cubes=)
    ids, _ = select_cubes(recipe, mirror_for(recipe.source, progress=False))
    rows = tacoreader.load(str(folder / ".tacocat")).data.to_arrow().column("id").to_pylist()
    assert len(ids) == CUBES and sorted(rows) == sorted(ids)
    v = verify_against_sources(recipe, [str(p) for p in shards_in(folder)], progress=False)
    assert v.passed, v.summary()
    assert v.copies == Counter(dict.fromkeys(ids, 1))
    return ids


def test_deployment_encodes_on_dask_workers_and_publishes_to_a_folder(
    cluster, twin, tmp_path, monkeypatch
):
    from flows.deploy import deploy

    monkeypatch.setenv("PREFECT_API_URL", cluster.api)
    assert not any(deploy(check=True, echo=lambda _: None).values()), "prefect deploy --all"
    target = tmp_path / "published"
    out = deployment_run(cluster, f"source={twin}", f"out={tmp_path / 'work'}", f"target={target}")
    assert "Completed" in out
    ids = check_published(target, twin)
    where = encoded_on(cluster, len(ids))
    assert sorted(where) == sorted(ids), cluster.services.tails()
    assert set(where.values()) == cluster.workers  # both workers took cubes, nothing else did
    # the two workers share this host's cores: their encoders get half each (issue 27)
    assert cluster.threads == {threads_note(shared_threads(2))}, cluster.threads
    assert "PASS" in (target / "REPORT.md").read_text()


def test_deployment_publishes_to_the_hub_with_the_token_from_a_secret_block(
    cluster, twin, hub, tmp_path
):
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: cluster.api}):
        Secret(value=TOKEN).save("cubecast-hf-token", overwrite=True)
    params = [f"source={twin}", f"out={tmp_path / 'work'}", f"target=hf://datasets/{REPO}"]
    deployment_run(cluster, *params, "hf_token_secret=cubecast-hf-token")
    snapshot = tmp_path / "snapshot"
    for rel, data in hub.repos[REPO].files.items():
        (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / rel).write_bytes(data)
    ids = check_published(snapshot, twin)
    where = encoded_on(cluster, len(ids))
    assert sorted(where) == sorted(ids) and set(where.values()) <= cluster.workers
    assert TOKEN not in cluster.services.log("worker")


def test_stale_deployment_is_refused_then_brought_up_to_date(cluster, monkeypatch):
    """A deployment made before the flow took ``dask_address``: ``cubecast deploy --check``
    and ``cubecast trigger`` name it; ``cubecast deploy`` brings it up to date."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.trigger import trigger
    from pipeline.cli import app

    monkeypatch.setenv("PREFECT_API_URL", cluster.api)
    with temporary_settings(updates={PREFECT_API_URL: cluster.api}):
        with get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name(DEPLOYMENT)
            old = dict(dep.parameter_openapi_schema)
            old["properties"] = {k: v for k, v in old["properties"].items() if k != "dask_address"}
            client.update_deployment(dep.id, DeploymentUpdate(parameter_openapi_schema=old))
    cli = CliRunner()
    r = cli.invoke(app, ["deploy", "--check"])
    assert r.exit_code == 1, r.output
    assert f"stale: {DEPLOYMENT}: flow takes dask_address, deployment does not" in r.output
    assert "up to date: publish-dataset/publish-deepextremecubes" in r.output
    with pytest.raises(CubecastError, match="is stale .*cubecast deploy"):
        trigger("dynamicearthnet", {"dask_address": cluster.scheduler})
    r = cli.invoke(app, ["deploy"])
    assert r.exit_code == 0, r.output
    assert "created automation 'cubecast: crash flow runs whose heartbeats stopped'" in r.output
    assert r.output.count("up to date: ") == 2 and "stale" not in r.output
    assert cli.invoke(app, ["deploy", "--check"]).exit_code == 0
