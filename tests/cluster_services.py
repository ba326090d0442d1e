"""The cluster path's services as their own processes on loopback, started as
docs/SCALING.md says: ``prefect server start``; a ``process`` work pool and the deployments
of prefect.yaml (``prefect deploy --all``); ``prefect worker start --pool``; a Dask
scheduler and Dask workers (``dask scheduler``, ``dask worker tcp://...``). Used by
tests/test_cluster.py, bench/cluster_faults.py and bench/throughput.py. Every service is
stopped by its PID (its process group), also when the caller fails."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOL = "cubecast"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def healthy(api: str) -> bool:
    import requests

    try:
        return requests.get(f"{api}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@dataclass
class Services:
    """Processes started here, each in its own session (so its children go with it), with
    its output in ``logs/<name>.log``."""

    logs: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, *cmd: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "w") as log:
            self.procs[name] = subprocess.Popen(
                cmd, cwd=self.logs, env={**self.env, **(env or {})}, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self.procs[name]

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def tails(self) -> str:
        return "\n".join(f"--- {n}\n{self.log(n)[-1500:]}" for n in self.procs)

    def wait(self, what: str, ready: Callable[[], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            assert not dead, f"{dead} exited while waiting for {what}\n{self.tails()}"
            assert time.monotonic() < deadline, f"no {what} after {timeout} s\n{self.tails()}"
            time.sleep(0.5)

    def run(self, *cmd: str, timeout: float = 300) -> subprocess.CompletedProcess:
        done = subprocess.run(
            cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        output = done.stdout[-3000:] + done.stderr[-3000:]
        assert done.returncode == 0, f"{' '.join(cmd[:4])}: {output}\n{self.tails()}"
        return done

    def kill(self, name: str, sig: int = signal.SIGKILL, tree: bool = True) -> None:
        """``sig`` to one service's process group, and (``tree``) to every process it started
        in a session of its own (the flow runs of a Prefect worker); waits for it."""
        import psutil

        proc = self.procs.pop(name)
        children = []
        if tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                children = psutil.Process(proc.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.send_signal(sig)  # psutil checks it is still the same process
        proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM to each service's process group (SIGKILL after 20 s), then any process one
        of them started in a session of its own (a flow run the worker still runs)."""
        import psutil

        children = []
        for proc in self.procs.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                children += psutil.Process(proc.pid).children(recursive=True)
        for proc in reversed(list(self.procs.values())):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()  # psutil checks it is still the same process


@dataclass
class Cluster:
    api: str
    scheduler: str
    workers: set[str]  # the Dask workers' addresses, from their own logs
    services: Services
    tmp: Path
    seen: set[str] = field(default_factory=set)  # ids of the task logs read so far
    threads: set[str] = field(default_factory=set)  # the thread notes of those task logs

    def start_dask_worker(self, name: str, nthreads: int = 1, env: dict | None = None) -> str:
        """``dask worker SCHEDULER --nthreads N --name NAME``; its address once registered."""
        s = self.services
        s.start(name, "dask", "worker", self.scheduler, "--host", "127.0.0.1",
                "--nthreads", str(nthreads), "--name", name,
                "--local-directory", str(self.tmp / name), env=env)  # fmt: skip
        return self.registered(name)

    def registered(self, name: str) -> str:
        log = lambda: self.services.log(name)  # noqa: E731
        self.services.wait(f"{name} registered", lambda: "Registered to" in log())
        address = re.findall(r"Start worker at:\s+(tcp://\S+)", log())[-1]
        self.workers.add(address)
        return address

    def start_prefect_worker(self) -> None:
        self.services.start("worker", "prefect", "worker", "start", "--pool", POOL)


def cluster_env(tmp: Path, api: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every service gets: this venv first on PATH, Prefect's home in
    ``tmp``, the server's URL, no telemetry, no ``PREFECT_*``/``HF_TOKEN`` from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HF_TOKEN"))}
    return env | {
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PREFECT_HOME": str(tmp / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "DO_NOT_TRACK": "1",
        **(extra or {}),
    }


@contextlib.contextmanager
def running_cluster(
    tmp: Path,
    extra_env: dict[str, str] | None = None,
    dask_workers: int = 2,
    nthreads: int = 1,
    prefect_worker: bool = True,
    worker_env: dict[str, str] | None = None,
) -> Iterator[Cluster]:
    """Server, scheduler and ``dask_workers`` workers (``dask-1``, ...); with
    ``prefect_worker`` also the pool, prefect.yaml's deployments and a Prefect worker."""
    port, dask_port = free_port(), free_port()
    api, scheduler = f"http://127.0.0.1:{port}/api", f"tcp://127.0.0.1:{dask_port}"
    services = Services(tmp, cluster_env(tmp, api, extra_env))
    cluster = Cluster(api, scheduler, set(), services, tmp)
    try:
        services.start("server", "prefect", "server", "start", "--host", "127.0.0.1",
                       "--port", str(port))  # fmt: skip
        services.start("scheduler", "dask", "scheduler", "--host", "127.0.0.1",
                       "--port", str(dask_port), "--no-dashboard")  # fmt: skip
        services.wait("Dask scheduler", lambda: listening(dask_port))
        names = [f"dask-{i}" for i in range(1, dask_workers + 1)]
        for name in names:  # started side by side, waited for below
            services.start(name, "dask", "worker", scheduler, "--host", "127.0.0.1",
                           "--nthreads", str(nthreads), "--name", name,
                           "--local-directory", str(tmp / name), env=worker_env)  # fmt: skip
        services.wait("Prefect server", lambda: healthy(api), timeout=180)
        if prefect_worker:
            services.run("prefect", "work-pool", "create", POOL, "--type", "process")
            services.run("prefect", "--no-prompt", "deploy", "--all")
            cluster.start_prefect_worker()
        for name in names:
            cluster.registered(name)
        assert len(cluster.workers) == dask_workers, services.tails()
        yield cluster
    finally:
        services.stop()
