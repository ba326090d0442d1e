"""Work-pool deployments that follow the code: ``cubecast deploy``.

``prefect.yaml`` (the repository root natively, ``/app`` in the worker image) lists the
deployments. :func:`deploy` creates its work pools (type ``process``) where the server has
none, runs ``prefect deploy --all`` on it from the project folder, then reads every deployment
back and compares it with the flow as the code defines it now: parameter schema, parameters,
entrypoint, work pool, pull steps and schedules. ``check=True`` only compares, so a deployment
made before a flow parameter was added, removed or changed is named, not run.

The pull step :func:`enter_project` runs on the worker at each flow run and enters
``$CUBECAST_PROJECT_DIR``, else the checkout the worker imports ``flows`` from (an editable
install): the same file works natively and in the image, whichever machine deployed it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import CubecastError

PROJECT_ENV = "CUBECAST_PROJECT_DIR"
PREFECT_FILE = "prefect.yaml"


def _is_project(folder: Path) -> bool:
    return (folder / PREFECT_FILE).is_file() and (folder / "flows").is_dir()


def project_root() -> Path:
    """The folder holding ``prefect.yaml`` and ``flows/``: ``$CUBECAST_PROJECT_DIR``, else the
    checkout this package is imported from, else the working directory."""
    if os.environ.get(PROJECT_ENV):
        root = Path(os.environ[PROJECT_ENV]).expanduser().resolve()
        if not _is_project(root):
            raise CubecastError(f"{PROJECT_ENV}={root}: no {PREFECT_FILE} and flows/ there")
        return root
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        if _is_project(root):
            return root
    raise CubecastError(
        f"no {PREFECT_FILE} beside the installed flows package nor in {Path.cwd()}: set "
        f"{PROJECT_ENV} to the folder holding {PREFECT_FILE} and flows/ (/app in the image)"
    )


def enter_project() -> dict[str, str]:
    """Pull step of ``prefect.yaml``: enter the project folder on the worker (its relative
    entrypoint and parameter paths resolve there)."""
    root = project_root()
    os.chdir(root)
    return {"directory": str(root)}


def load_spec(root: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((root / PREFECT_FILE).read_text())


def flow_schema(root: Path, entrypoint: str) -> tuple[str, dict[str, Any]]:
    """The flow's name and its parameter schema as the code at ``root`` defines it now."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    flow = load_flow_from_entrypoint(str(root / entrypoint))
    return flow.name, parameter_schema(flow).model_dump_for_openapi()


def schema_drift(deployed: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """How a deployment's parameter schema differs from the flow's, one phrase each."""
    old = (deployed or {}).get("properties", {})
    new = current.get("properties", {})
    drift = [f"flow takes {k}, deployment does not" for k in new if k not in old]
    drift += [f"deployment takes {k}, flow does not" for k in old if k not in new]
    drift += [f"parameter {k} changed" for k in new if k in old and old[k] != new[k]]
    if sorted((deployed or {}).get("required", [])) != sorted(current.get("required", [])):
        drift.append("required parameters changed")
    return drift


def deployment_drift(dep: Any, want: dict[str, Any], pull: list, schema: dict) -> list[str]:
    """Everything in which deployment ``dep`` on the server differs from ``prefect.yaml``'s
    entry ``want`` (and its ``pull`` steps) and the flow's current ``schema``."""
    drift = schema_drift(dep.parameter_openapi_schema, schema)
    given = want.get("parameters") or {}
    props = schema.get("properties", {})
    drift += [f"prefect.yaml gives {k}, flow does not take it" for k in given if k not in props]
    if (dep.parameters or {}) != given:
        drift.append("parameters differ from prefect.yaml")
    if dep.entrypoint != want["entrypoint"]:
        drift.append(f"entrypoint {dep.entrypoint} (prefect.yaml: {want['entrypoint']})")
    pool = (want.get("work_pool") or {}).get("name")
    if dep.work_pool_name != pool:
        drift.append(f"work pool {dep.work_pool_name} (prefect.yaml: {pool})")
    if (dep.pull_steps or []) != want.get("pull", pull):
        drift.append("pull steps differ from prefect.yaml")
    crons = sorted(s["cron"] for s in want.get("schedules") or [] if "cron" in s)
    deployed = sorted(getattr(s.schedule, "cron", "") for s in dep.schedules or [])
    if crons != deployed:
        drift.append(f"schedules {deployed} (prefect.yaml: {crons})")
    return drift


def stale_deployments(client: Any, root: Path) -> dict[str, list[str]]:
    """``flow/deployment`` -> what is stale about it (empty: up to date), for every deployment
    of ``prefect.yaml``; a missing one is stale too."""
    from prefect.exceptions import ObjectNotFound

    spec = load_spec(root)
    report: dict[str, list[str]] = {}
    schemas: dict[str, tuple[str, dict[str, Any]]] = {}
    for want in spec.get("deployments", []):
        entry = want["entrypoint"]
        flow_name, schema = schemas.setdefault(entry, flow_schema(root, entry))
        name = f"{flow_name}/{want['name']}"
        try:
            dep = client.read_deployment_by_name(name)
        except ObjectNotFound:
            report[name] = ["not deployed"]
            continue
        report[name] = deployment_drift(dep, want, spec.get("pull") or [], schema)
    return report


def ensure_pools(client: Any, spec: dict[str, Any], echo: Callable[[str], None]) -> None:
    """Create each work pool ``prefect.yaml`` names that the server lacks, type ``process``
    (as ``prefect work-pool create NAME --type process`` does)."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    names = {(d.get("work_pool") or {}).get("name") for d in spec.get("deployments", [])}
    for name in sorted(n for n in names if n):
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(
                WorkPoolCreate(name=name, type="process", base_job_template=template)
            )
            echo(f"created work pool {name} (type process)")


CRASH_AUTOMATION = "cubecast: crash flow runs whose heartbeats stopped"
HEARTBEAT_S = 30  # prefect.yaml's PREFECT_FLOWS_HEARTBEAT_FREQUENCY (Prefect's minimum)


def ensure_crash_automation(client: Any, echo: Callable[[str], None]) -> None:
    """The automation of Prefect's "detect zombie flows" guide, created if missing: a flow
    run whose heartbeat (every ``HEARTBEAT_S``) has not come for three periods and that has
    not finished is marked Crashed. A run whose worker was killed with it otherwise stays
    Running for ever, and its schedule's next run is what resumes the target."""
    from datetime import timedelta

    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    if client.read_automations_by_name(CRASH_AUTOMATION):
        return
    ends = ("Completed", "Failed", "Cancelled", "Crashed")
    trigger = EventTrigger(
        after={"prefect.flow-run.heartbeat"},
        expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in ends)},
        match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
        for_each={"prefect.resource.id"},
        posture=Posture.Proactive,
        threshold=1,
        within=timedelta(seconds=3 * HEARTBEAT_S),
    )
    action = ChangeFlowRunState(
        state=StateType.CRASHED, message=f"no heartbeat for {3 * HEARTBEAT_S} s"
    )
    client.create_automation(
        AutomationCore(name=CRASH_AUTOMATION, trigger=trigger, actions=[action])
    )
    echo(f"created automation {CRASH_AUTOMATION!r}")


def prefect_deploy(root: Path, api: str) -> None:
    """``prefect deploy --all`` on the project's ``prefect.yaml``, from the project folder."""
    cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"]
    cmd += ["--prefect-file", str(root / PREFECT_FILE)]
    env = {**os.environ, "PREFECT_API_URL": api}
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        raise CubecastError(f"prefect deploy --all failed: {' / '.join(tail)}")


def deploy(check: bool = False, echo: Callable[[str], None] = print) -> dict[str, list[str]]:
    """Bring the deployments of ``prefect.yaml`` up to date on the server at
    ``PREFECT_API_URL`` (``check``: only compare); returns what is still stale per deployment."""
    from flows.trigger import api_client, require_api

    api = require_api()
    root = project_root()
    if not check:
        with api_client(api) as client:
            ensure_pools(client, load_spec(root), echo)
            ensure_crash_automation(client, echo)
        echo(f"prefect deploy --all --prefect-file {root / PREFECT_FILE} on {api}")
        prefect_deploy(root, api)
    # a client of its own: one kept open across the deploy's subprocess was reset by the
    # server ("Connection reset by peer" on its idle keep-alive connection, seen in CI)
    with api_client(api) as client:
        report = stale_deployments(client, root)
    for name, drift in report.items():
        echo(f"stale: {name}: {'; '.join(drift)}" if drift else f"up to date: {name}")
    return report
