"""The ``publish-dataset`` flow: fetch -> encode -> pack -> verify -> publish, one recipe.

Each task wraps a plain function of :mod:`pipeline.build`; cubes are encoded concurrently
in separate processes (the default), on threads, or on a Dask cluster. Encoded cubes are
cached on what determines them (the recipe's source, variables and codec settings and the
cube id), so a re-run skips them.

By default (``incremental=True``) the flow hands over to ``publish-incremental``
(:mod:`flows.incremental`): the target's own index, reconciled with what the target holds,
decides what to encode; cubes go in batches of one commit each under ``max_disk`` (a small
dataset is one batch), and a stopped run is continued by the next. ``incremental=False``
is the single-shot mode: every cube encoded into ``out``, verified there, then mirrored to
the target.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

# before prefect reads its settings: no telemetry from the temporary local server
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import TaskRunContext
from prefect.futures import wait
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from flows.incremental import encoder_share, publish_incremental_flow
from pipeline.build import encode_step, fingerprint, pack_step, select_cubes, verify_step
from pipeline.errors import CubecastError
from pipeline.lock import folder_lock
from pipeline.publish.targets import PublishResult, publish
from pipeline.publish.verify import Verification
from pipeline.recipe import Recipe, load_recipe
from pipeline.sources import mirror_for
from pipeline.taco.pack import StagedSample

Runner = Literal["processes", "threads", "dask"]


def _recipe(name: str, source: str | None, cubes: int | None) -> Recipe:
    recipe = load_recipe(name, location=source or "")
    if cubes:
        sel = recipe.source.cubes.model_copy(update={"count": cubes})
        recipe = recipe.model_copy(
            update={"source": recipe.source.model_copy(update={"cubes": sel})}
        )
    return recipe


@task(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=5))
def list_cubes(recipe: Recipe) -> list[str]:
    ids, note = select_cubes(recipe, mirror_for(recipe.source, progress=False))
    get_run_logger().info(note)
    return ids


def _encode_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Same recipe settings + cube + output folder = same staged sample."""
    recipe, cube_id, out = parameters["recipe"], parameters["cube_id"], parameters["out"]
    return f"encode-{fingerprint(recipe, cube_id)}-{Path(out).resolve()}"


@task(
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    cache_key_fn=_encode_cache_key,
    persist_result=True,
)
def encode_cube(recipe: Recipe, cube_id: str, out: str, concurrent: int = 1) -> str:
    """Download one source cube, encode it and stage it on disk; returns the staged folder."""
    return str(encode_step(recipe, cube_id, out, threads=encoder_share(concurrent)).folder)


@task
def pack(recipe: Recipe, staged: list[str], out: str) -> list[str]:
    samples = []
    for folder in map(Path, staged):
        if not (folder / ".fingerprint").is_file():  # cached result whose files were removed
            folder = encode_step(recipe, folder.name, out).folder
        samples.append(StagedSample(folder))
    return [str(p) for p in pack_step(recipe, samples, out)]


@task
def verify(recipe: Recipe, shards: list[str], out: str) -> Verification:
    verification = verify_step(recipe, shards, out, progress=False)
    rows = quality_rows(verification)
    create_table_artifact(rows, key=f"{recipe.name}-quality", description="per-cube quality")
    create_markdown_artifact(
        (Path(out) / "REPORT.md").read_text(),
        key=f"{recipe.name}-report",
        description="verification report",
    )
    verification.raise_for_failures()
    return verification


def quality_rows(verification: Verification) -> list[dict[str, Any]]:
    return verification.quality_rows()


@task(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=10))
def push(out: str, target: str, dry_run: bool, private: bool) -> PublishResult:
    return publish(out, target, dry_run=dry_run, private=private)


def check_scheduler(address: str, timeout: float = 10.0) -> None:
    """One line, before anything is encoded or published, when nothing answers at the Dask
    scheduler's address (otherwise the task runner fails later with a connection traceback)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
        if not host or not port:
            raise ValueError("no host:port")
        socket.create_connection((host, port), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise CubecastError(
            f"Dask scheduler {address} not reachable ({exc}); nothing encoded or published"
        ) from None


def task_runner(
    runner: Runner,
    workers: int,
    dask_address: str | None,
    dask_cluster_class: str | None = None,
    dask_cluster_kwargs: dict[str, Any] | None = None,
) -> Any:
    """Processes (the default), threads, or Dask: an existing scheduler (``dask_address``),
    a cluster class started for the run (``dask_cluster_class``, e.g.
    ``dask_kubernetes.operator.KubeCluster`` with its ``dask_cluster_kwargs``), or a
    LocalCluster of ``workers`` processes."""
    if runner == "dask" or dask_address or dask_cluster_class:
        from prefect_dask import DaskTaskRunner

        if dask_address:
            check_scheduler(dask_address)
            return DaskTaskRunner(address=dask_address)
        if dask_cluster_class:
            return DaskTaskRunner(
                cluster_class=dask_cluster_class, cluster_kwargs=dask_cluster_kwargs or {}
            )
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True},
        )
    if runner == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    # One process per concurrent cube: concurrent libx265 encoders in one process have
    # crashed the flow process (SIGSEGV) with PyAV's wheels.
    return ProcessPoolTaskRunner(max_workers=workers)


@flow(name="encode-cubes")
def encode_cubes(recipe: Recipe, cube_ids: list[str], out: str, workers: int = 1) -> list[str]:
    concurrent = min(len(cube_ids), workers)
    futures = [encode_cube.submit(recipe, cid, out, concurrent) for cid in cube_ids]
    wait(futures)
    return [f.result() for f in futures]


def single_shot(
    spec: Recipe, out: str, target: str, runner: Any, workers: int, dry_run: bool
) -> dict:
    """Every selected cube encoded into ``out``, packed, verified, then published at once."""
    log = get_run_logger()
    ids = list_cubes(spec)
    log.info("%d cubes from %s", len(ids), spec.source.location)
    encoder = encode_cubes.with_options(task_runner=runner)
    with folder_lock(out, "cubecast run or pack"):  # one writer per output folder
        staged = encoder(spec, ids, out, workers)
        shards = pack(spec, staged, out)
        verification = verify(spec, shards, out)
    result = push(out, target, dry_run, spec.publish.private)
    log.info(result.summary())
    return {
        "recipe": spec.name,
        "out": out,
        "shards": shards,
        "verified": verification.passed,
        "summary": verification.summary(),
        "cubes": quality_rows(verification),
        "target": result.target,
        "uploaded": result.uploaded,
        "unchanged": result.unchanged,
        "dry_run": dry_run,
    }


@flow(name="publish-dataset", log_prints=True)
def publish_dataset(
    recipe: str = "dynamicearthnet",
    source: str | None = None,
    out: str | None = None,
    target: str | None = None,
    cubes: int | None = None,
    workers: int = 2,
    runner: Runner = "processes",
    dask_address: str | None = None,
    synthesize: bool = False,
    dry_run: bool = False,
    incremental: bool = True,
    max_disk: str | None = None,
    batch_cubes: int = 100,
    prune: bool = False,
    hf_token_secret: str | None = None,
    dask_cluster_class: str | None = None,
    dask_cluster_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Publish one dataset from its recipe.

    ``source`` overrides the recipe's mirror; with ``synthesize`` a synthetic twin is written
    there first when it does not exist (the embedded default). ``target`` defaults to
    ``out/published/<recipe>``; give ``hf://datasets/ORG/NAME`` to push to the hub.
    ``incremental`` (the default) publishes in batches (``max_disk``, ``batch_cubes``,
    ``prune``; the hub token from the Prefect Secret block ``hf_token_secret`` when the
    worker has no ``HF_TOKEN``); with ``dry_run`` it reports its plan (what is new,
    changed, unchanged or to repair) and encodes nothing. ``incremental=False``: single shot.
    """
    log = get_run_logger()
    # Dask workers have their own working directory: local paths go to them absolute
    if source and "://" not in source:
        source = str(Path(source).resolve())
    if synthesize and source and not Path(source).exists():
        from pipeline.sources.twins import TWIN_WRITERS

        log.info("writing a synthetic %s twin to %s", recipe, source)
        TWIN_WRITERS[recipe](source, cubes=cubes or 2, frames=48, size=64, progress=False)
    spec = _recipe(recipe, source, cubes)
    if spec.codec.hedge and workers >= (os.cpu_count() or 1):
        # the core a small cube's final encode leaves idle is another cube's here
        log.info("hedged final encodes off: %d cubes at once on as many cores", workers)
        spec = spec.without_hedge()
    out = str(Path(out or f"out/{spec.name}").resolve())
    target = target or f"out/published/{spec.name}"
    runner_ = task_runner(runner, workers, dask_address, dask_cluster_class, dask_cluster_kwargs)
    if incremental:
        return publish_incremental_flow.with_options(task_runner=runner_)(
            spec, target, out, max_disk, batch_cubes, workers, prune, hf_token_secret, dry_run
        )
    return single_shot(spec, out, target, runner_, workers, dry_run)


if __name__ == "__main__":
    publish_dataset()
