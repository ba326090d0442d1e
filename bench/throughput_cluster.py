"""bench/throughput.py's cluster steps (issue 27, item 4): the same cubes through the
``publish-dataset`` flow (``cubecast run``) on a Dask cluster of 1 or 2 ``dask worker
--nthreads 1`` processes started by address, and on the process runner, each with a
Prefect server already up (tests/cluster_services.py), so its start is not in the rate.

Per worker process (a ``dask worker`` process tree: nanny, worker, encoder processes; or
one process of the process runner's pool with its children) the parent samples, twice a
second, the tree's PSS (peak kept) and its CPU seconds (its own and its reaped children's),
so CPU seconds / wall seconds says how many of the cores one worker kept busy. The encode
span runs from the first to the last sample in which a worker used CPU (the flow's own
listing, packing and verifying before and after it are outside).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from tests.cluster_services import running_cluster


def _tree(root: psutil.Process) -> tuple[int, float]:
    """(PSS bytes, CPU seconds incl. reaped children) of a process and its descendants."""
    pss, cpu = 0, 0.0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            pss += p.memory_full_info().pss
            t = p.cpu_times()
            cpu += t.user + t.system + t.children_user + t.children_system
    return pss, cpu


def _sample(roots: list[psutil.Process], seen: dict[int, dict[str, float]]) -> bool:
    """Update each root's peak PSS and CPU seconds; whether a worker used a CPU meanwhile."""
    grew = False
    for root in roots:
        with contextlib.suppress(psutil.Error):
            pss, cpu = _tree(root)
            s = seen.setdefault(root.pid, {"pss": 0, "cpu0": cpu, "cpu": cpu})
            grew |= cpu - s["cpu"] > 0.2  # more than its idle chatter in half a second
            s["pss"], s["cpu"] = max(s["pss"], pss), max(s["cpu"], cpu)
    return grew


def flow_on(args: Any, dask_workers: int, threads: int | None = None) -> dict[str, Any]:
    """``cubecast run`` of ``args.flow_cubes`` cubes; ``dask_workers`` 0: the process runner
    (2 pool processes), else that many Dask workers by address. ``threads``: the encoder
    threads per worker (``CUBECAST_ENCODE_THREADS``), unset: the encoders' own choice."""
    load = os.getloadavg()[0]
    tmp = args.work / f"cluster-{dask_workers}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    extra = {"CUBECAST_ENCODE_THREADS": str(threads)} if threads else {}
    with running_cluster(tmp, extra, dask_workers=dask_workers, prefect_worker=False) as cl:
        cmd = [str(Path(sys.executable).with_name("cubecast")), "run", args.recipe,
               "--source", str(args.twin), "--out", str(tmp / "work"), "--to",
               str(tmp / "published"), "--cubes", str(args.flow_cubes),
               "--workers", "2"]  # fmt: skip
        if dask_workers:
            cmd += ["--dask-address", cl.scheduler]
        names = [n for n in cl.services.procs if n.startswith("dask-")]
        fixed = [psutil.Process(cl.services.procs[n].pid) for n in names]
        seen: dict[int, dict[str, float]] = {}
        _sample(fixed, seen)
        t = time.perf_counter()
        log = (tmp / "flow.log").open("wb")  # the flow's own log, kept for a look afterwards
        run = subprocess.Popen(cmd, env=cl.services.env, stdout=log, stderr=subprocess.STDOUT)
        flow = psutil.Process(run.pid)
        busy: list[float] = []  # when the workers were using CPU: the encode phase
        while run.poll() is None:
            roots = fixed or [c for c in _children(flow) if "python" in c.name()]
            if _sample(roots, seen):
                busy.append(time.perf_counter() - t)
            time.sleep(0.5)
        seconds = time.perf_counter() - t
        log.close()
        if run.returncode:
            raise SystemExit(f"cubecast run failed ({run.returncode})\n{cl.services.tails()}")
    workers = [
        {
            "peak_pss_mb": s["pss"] / 2**20,
            "cpu_s": s["cpu"] - s["cpu0"],
            "cores_busy": (s["cpu"] - s["cpu0"]) / seconds,
        }  # fmt: skip
        for s in seen.values()
        if s["cpu"] - s["cpu0"] > 1  # a pool process that took no cube
    ]
    cubes = args.flow_cubes
    span = busy[-1] - busy[0] + 0.5 if busy else seconds
    return {
        "seconds": seconds,
        "encode_span_s": span,
        "encode_cubes_per_hour": 3600 * cubes / span,
        "cubes": cubes,
        "cubes_per_hour": 3600 * cubes / seconds,
        "worker_processes": dask_workers or 2,
        "encode_threads": threads or "auto",
        "workers": workers,
        "load_average_before": load,
        "cpu_count": os.cpu_count(),
    }


def _children(flow: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return flow.children()
    return []


def child_dask_addr_1(args: Any) -> dict[str, Any]:
    return flow_on(args, 1)


def child_dask_addr_2(args: Any) -> dict[str, Any]:
    return flow_on(args, 2)


def child_process_runner_2(args: Any) -> dict[str, Any]:
    return flow_on(args, 0)


STEPS = {
    "dask_addr_1": child_dask_addr_1,
    "dask_addr_2": child_dask_addr_2,
    "process_runner_2": child_process_runner_2,
}
