"""Randomized faults of the cluster path (issue 27, item 2), every service a real process on
loopback (tests/cluster_services.py: ``prefect server start``, a ``process`` work pool with
prefect.yaml's deployments, ``prefect worker start``, ``dask scheduler``, two ``dask worker``).

Each trial publishes a small DynamicEarthNet twin to a fresh folder target with
``prefect deployment run publish-dataset/publish-dynamicearthnet --watch -p runner=dask
-p dask_address=...`` (batches of 2 cubes, one commit each) and injects one fault:

- **dask-worker**: once a random one of the encode tasks has started (and a random part of
  a second later), a random Dask worker among those running a task is SIGKILLed with its
  process group; its task must be rerun on the other worker and the run complete. The
  killed worker is restarted after the trial.
- **prefect-worker**: once the flow run is Running and has published j of the cubes (j
  random, fewer than all) and a random part of a second later, the Prefect worker and the
  flow run it started
  are SIGKILLed (the worker's machine lost); the flow run's state is read for up to
  ``--crash-wait`` s (is it marked Crashed? by the heartbeat automation ``cubecast deploy``
  creates), then a new worker is started and the next deployment run must resume from the
  target's index and publish the rest.
- **scheduler-unreachable**: the run is given a scheduler address nobody listens on (a
  free port, or a scheduler started then killed); the run must fail with one clear line
  and leave the target as it was (a random earlier partial publish, or nothing).

After each trial the target must be whole (bench/publish_trials.py's check: every shard the
index names present byte for byte, every cube in exactly one shard, ``.tacocat`` and the
card agree, every sample decodes), and every sample must verify against its source cube.

    python bench/cluster_faults.py --trials 5 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.publish_trials import Target, whole  # noqa: E402
from pipeline.sources.twins import write_dynamicearthnet  # noqa: E402
from tests.cluster_services import Cluster, free_port, running_cluster  # noqa: E402

DEPLOYMENT = "publish-dataset/publish-dynamicearthnet"
KINDS = ("dask-worker", "prefect-worker", "scheduler-unreachable")


class Runs:
    """``prefect deployment run --watch`` on the cluster, with the bench's parameters."""

    def __init__(self, cluster: Cluster, twin: Path, cubes: int, tmp: Path) -> None:
        self.cluster, self.twin, self.cubes, self.tmp = cluster, twin, cubes, tmp
        self.n = 0

    def start(self, target: Path, work: Path, scheduler: str | None = None) -> tuple:
        self.n += 1
        log = self.tmp / f"run-{self.n}.log"
        cmd = ["prefect", "deployment", "run", DEPLOYMENT, "--watch", "--watch-timeout", "600"]
        params = {"source": self.twin, "out": work, "target": target, "cubes": self.cubes,
                  "runner": "dask", "dask_address": scheduler or self.cluster.scheduler,
                  "batch_cubes": 2, "workers": 2}  # fmt: skip
        cmd += [a for k, v in params.items() for a in ("-p", f"{k}={v}")]
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.cluster.services.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        return proc, log

    def flow_run_id(self, log: Path, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while not (m := re.search(r"UUID: (\S+)", log.read_text())):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        return m[1]

    def finish(self, proc: subprocess.Popen, log: Path, timeout: float = 900) -> tuple[int, str]:
        proc.wait(timeout=timeout)
        return proc.returncode, log.read_text()


def client_call(cluster: Cluster, fn: Any) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: cluster.api}):
        with get_client(sync_client=True) as client:
            return fn(client)


def run_state(cluster: Cluster, run_id: str) -> str:
    return client_call(cluster, lambda c: c.read_flow_run(run_id).state.type.value)


def run_logs(cluster: Cluster, run_id: str) -> list[str]:
    """Every log line of the flow run and its subflows and tasks (by flow run id)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    def read(c: Any) -> list[str]:
        subs = c.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])
            )
        )  # fmt: skip
        ids = [run_id, *(str(r.id) for r in subs)]
        out, offset = [], 0
        flt = LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids))
        while batch := c.read_logs(log_filter=flt, limit=200, offset=offset):
            out, offset = out + [b.message for b in batch], offset + len(batch)
        return out

    return client_call(cluster, read)


def verify_all(target: Path, twin: Path, cubes: int) -> str:
    """'' when every sample of the target's shards is held once and verifies against its
    source cube."""
    from flows.publish_dataset import _recipe
    from pipeline.build import shards_in, verify_against_sources

    recipe = _recipe("dynamicearthnet", str(twin), cubes)
    v = verify_against_sources(recipe, [str(p) for p in shards_in(target)], progress=False)
    twice = [sid for sid, n in v.copies.items() if n != 1]
    if twice or not v.passed:
        return f"held more than once: {twice[:5]}; {v.summary()}"
    return ""


def snapshot(target: Path) -> dict[str, int]:
    if not target.is_dir():
        return {}
    return {str(p.relative_to(target)): p.stat().st_size for p in target.rglob("*") if p.is_file()}


def kill_dask_worker(cl: Cluster, rng: random.Random, cubes: int) -> dict[str, Any]:
    """Once the k-th encode task (k random in 1..cubes) has started, after a random part of
    a second, SIGKILL a random worker among those running a task (any worker if none)."""
    from distributed import Client

    k, pause = rng.randint(1, cubes), rng.uniform(0, 1.0)
    t0, started = time.monotonic(), set()
    with Client(cl.scheduler, timeout=10) as client:
        while len(started) < k and time.monotonic() - t0 < 300:
            started |= {t for ts in client.processing().values() for t in ts}
            time.sleep(0.05)
        time.sleep(pause)
        busy = {a: list(t) for a, t in client.processing().items() if t}
        info = client.scheduler_info()["workers"]
    names = {a: w.get("name") for a, w in info.items()}
    pick = rng.choice(sorted(busy) if busy else sorted(names))
    name = str(names[pick])
    cl.services.kill(name)
    cl.workers.discard(pick)
    after = round(time.monotonic() - t0, 1)
    return {"killed": name, "after_task": k, "mid_task": bool(busy.get(pick)),
            "tasks": busy.get(pick, []), "killed_after_s": after}  # fmt: skip


def trial(kind: str, k: int, rng: random.Random, cl: Cluster, runs: Runs, a: Any) -> dict:
    tmp = runs.tmp
    target, work = tmp / f"target-{kind}-{k}", tmp / f"work-{kind}-{k}"
    row: dict[str, Any] = {"kind": kind, "trial": k}
    t0 = time.monotonic()
    if kind == "dask-worker":
        proc, log = runs.start(target, work)
        row.update(kill_dask_worker(cl, rng, a.cubes))
        rc, out = runs.finish(proc, log)
        run_id = runs.flow_run_id(log)
        row.update(rc=rc, state=run_state(cl, run_id))
        lines = [m for m in run_logs(cl, run_id) if m.startswith("encoded ")]
        row["encodes_logged"] = len(lines)
        cl.start_dask_worker(row["killed"])  # back to two workers for the next trial
    elif kind == "prefect-worker":
        proc, log = runs.start(target, work)
        run_id = runs.flow_run_id(log)
        t_run = wait_running(cl, run_id)  # killed before it ran, it stays Pending (no heartbeat)
        # once j cubes (random, fewer than all) are published, and a random second later
        j, pause = rng.randrange(a.cubes), rng.uniform(0, 1.0)
        while len(index_cubes(target)) < j and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(pause)
        cl.services.kill("worker")  # the worker, and the flow run it started
        row.update(kill_after_cubes=j, killed_after_s=round(time.monotonic() - t0 - t_run, 1))
        row["cubes_before_resume"], row["cubes"] = len(index_cubes(target)), a.cubes
        deadline = time.monotonic() + a.crash_wait
        while (state := run_state(cl, run_id)) not in ("CRASHED", "FAILED", "COMPLETED"):
            if time.monotonic() > deadline:
                break
            time.sleep(2)
        row["state_after_kill"] = state
        row["crashed_after_s"] = round(time.monotonic() - deadline + a.crash_wait, 1)
        proc.kill()  # the --watch of a run nobody runs any more
        proc.wait()
        cl.start_prefect_worker()
        proc, log = runs.start(target, work)
        rc, out = runs.finish(proc, log)
        row.update(rc=rc, state=run_state(cl, runs.flow_run_id(log)))
    else:
        if rng.random() < 0.5:  # a partial publish first: the target has cubes already
            proc, log = runs.start(target, work)
            row["first_rc"] = runs.finish(proc, log)[0]
        before = snapshot(target)
        how = rng.choice(["free port", "killed scheduler"])
        address = f"tcp://127.0.0.1:{free_port()}"
        if how == "killed scheduler":
            port = int(address.rsplit(":", 1)[1])
            cl.services.start("gone", "dask", "scheduler", "--host", "127.0.0.1",
                              "--port", str(port), "--no-dashboard")  # fmt: skip
            cl.services.wait("short-lived scheduler", lambda: listening(port))
            cl.services.kill("gone")
        proc, log = runs.start(target, work, scheduler=address)
        rc, out = runs.finish(proc, log)
        run_id = runs.flow_run_id(log)
        row.update(how=how, rc=rc, state=run_state(cl, run_id))
        message = client_call(cl, lambda c: c.read_flow_run(run_id).state.message) or ""
        said = [m for m in run_logs(cl, run_id) if address in m and "Dask scheduler" in m]
        row["state_message"] = message  # the run's state: one line, naming the scheduler
        row["clear_line"] = bool(said) and address in message and "\n" not in message
        row["watch_said"] = out.strip().splitlines()[-1][:200] if out.strip() else ""
        row["target_unchanged"] = snapshot(target) == before
        row["seconds"] = round(time.monotonic() - t0, 1)
        return row
    row["whole"] = whole(Target(str(target), None), a.cubes, tmp) or "whole"
    row["verified"] = verify_all(target, runs.twin, a.cubes) or "verified"
    row["seconds"] = round(time.monotonic() - t0, 1)
    return row


def listening(port: int) -> bool:
    from tests.cluster_services import listening as up

    return up(port)


def index_cubes(target: Path) -> list[str]:
    from pipeline.publish.index import INDEX_FILE, PublishedIndex

    path = target / INDEX_FILE
    return list(PublishedIndex.parse(path.read_bytes(), "t").cubes) if path.is_file() else []


def wait_running(cl: Cluster, run_id: str, timeout: float = 300) -> float:
    """Seconds until the flow run is Running (or has ended)."""
    t0 = time.monotonic()
    while run_state(cl, run_id) in ("SCHEDULED", "PENDING"):
        assert time.monotonic() - t0 < timeout, f"{run_id} not running after {timeout} s"
        time.sleep(0.2)
    return time.monotonic() - t0


def landed(row: dict[str, Any]) -> bool:
    """A Prefect worker kill that stopped a run before it had published every cube."""
    return row["state_after_kill"] != "COMPLETED" and row["cubes_before_resume"] < row["cubes"]


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| fault | trials | kill landed mid-task / mid-run | run completed (or resumed) | "
        "marked crashed | every cube once, decodes | verifies | clear line | target unchanged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        rs = [r for r in rows if r["kind"] == kind]
        if not rs:
            continue
        n = len(rs)

        def count(pred: Any, rs: list = rs) -> str:
            return f"{sum(bool(pred(r)) for r in rs)}/{n}"

        fail = kind == "scheduler-unreachable"
        lines.append(
            f"| {kind} | {n} | "
            + (count(lambda r: r.get("mid_task")) if kind == "dask-worker" else "")
            + (count(landed) if kind == "prefect-worker" else "")
            + ("-" if fail else "")
            + f" | {'-' if fail else count(lambda r: r['rc'] == 0 and r['state'] == 'COMPLETED')}"
            + " | "
            + (
                f"{sum(r['state_after_kill'] == 'CRASHED' for r in rs if landed(r))}/"
                f"{sum(map(landed, rs))}"
                if "prefect" in kind
                else "-"
            )
            + f" | {'-' if fail else count(lambda r: r['whole'] == 'whole')}"
            + f" | {'-' if fail else count(lambda r: r['verified'] == 'verified')}"
            + f" | {count(lambda r: r.get('clear_line')) if fail else '-'}"
            + f" | {count(lambda r: r.get('target_unchanged')) if fail else '-'} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=5, help="trials per fault kind")
    p.add_argument("--cubes", type=int, default=6)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--crash-wait", type=float, default=180, help="s to wait for Crashed")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--append", action="store_true", help="add to the rows of --out's JSON")
    a = p.parse_args()
    rng = random.Random(a.seed)
    old = Path(a.out) / "cluster_faults.json"
    rows: list[dict[str, Any]] = json.loads(old.read_text())["rows"] if a.append else []
    for r in rows:
        r.setdefault("cubes", a.cubes)
    with tempfile.TemporaryDirectory(prefix="cluster-faults-") as tmpdir:
        tmp = Path(tmpdir)
        twin = tmp / "twin" / "dynamicearthnet"
        write_dynamicearthnet(twin, cubes=a.cubes, frames=a.frames, size=a.size, progress=False)
        extra = {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "10s"}
        with running_cluster(tmp, extra) as cl:
            cl.services.run("cubecast", "deploy")  # the automation that marks runs Crashed
            runs = Runs(cl, twin, a.cubes, tmp)
            t0 = time.monotonic()  # one undisturbed run sets the range of kill times
            proc, log = runs.start(tmp / "target-0", tmp / "work-0")
            startup = wait_running(cl, runs.flow_run_id(log))
            rc, out = runs.finish(proc, log)
            a.full_s = time.monotonic() - t0
            a.run_s = a.full_s - startup  # from Running to the end
            assert rc == 0, out[-3000:]
            print(f"undisturbed run: {a.full_s:.1f} s, {a.run_s:.1f} s running", flush=True)
            for k in range(len(rows), len(rows) + a.trials):
                for kind in a.kinds.split(","):
                    row = trial(kind, k, rng, cl, runs, a)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    text = table(rows)
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"full_run_s": a.full_s, "running_s": a.run_s, "cubes": a.cubes,
              "frames": a.frames, "size": a.size, "load_average": os.getloadavg(),
              "rows": rows, "table": text}  # fmt: skip
    (out / "cluster_faults.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
