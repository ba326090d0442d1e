"""The ``publish-incremental`` flow: a whole dataset in batches, each one hub commit, with the
encode tasks on the flow's task runner (processes, threads, or a Dask cluster).

:func:`pipeline.publish.incremental.publish_incremental` does the work; here its encoder
hands each group of cubes to Prefect tasks, so they run where the task runner runs them
(``DaskTaskRunner(address=...)``: an existing scheduler; ``cluster_class=...``: e.g.
dask-kubernetes' ``KubeCluster``, started for the run). The work folder must be one folder
for the flow and the workers (a shared volume on a cluster): workers download and stage
cubes into it, the flow packs them from it.

``python -m flows.incremental RECIPE --to TARGET --max-disk 10GB`` runs it on this machine
(the GitHub runner mode of ``.github/workflows/publish.yml``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.futures import wait  # noqa: E402
from prefect.tasks import exponential_backoff  # noqa: E402

from pipeline.build import stage_cube  # noqa: E402
from pipeline.codec.cores import shared_threads  # noqa: E402
from pipeline.publish.incremental import publish_incremental  # noqa: E402
from pipeline.publish.runplan import EncodeMany  # noqa: E402
from pipeline.recipe import Recipe  # noqa: E402
from pipeline.taco.staged import StagedSample  # noqa: E402


@task(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=10))
def stage_for_publish(
    recipe: Recipe, cube_id: str, out: str, concurrent: int = 1
) -> tuple[str, bool]:
    """Download and encode one cube into the work folder (or find it staged there), its
    encoders on this host's share of the cores (``concurrent``: the flow's cubes at once)."""
    threads = encoder_share(concurrent)
    staged, encoded = stage_cube(recipe, cube_id, out, threads=threads)
    verb = "encoded" if encoded else "found staged"
    get_run_logger().info("%s %s on %s (%s)", verb, cube_id, where(), threads_note(threads))
    return str(staged.folder), encoded


def threads_note(n: int) -> str:
    """What a task's log says of its encoders' threads."""
    return f"{n} thread{'s' * (n > 1)} per encoder" if n else "encoders on every core"


def encoder_share(concurrent: int) -> int:
    """Encoder threads for a task: on a Dask worker, this host's cores shared by the task
    threads of every worker on it (the scheduler's count); elsewhere by ``concurrent``."""
    return shared_threads(_dask_threads_on_host() or concurrent)


def _dask_threads_on_host() -> int:
    """Task threads of the Dask workers on this worker's host (0: not on a Dask worker)."""
    try:
        from distributed import get_client, get_worker

        host = get_worker().address.rsplit(":", 1)[0]
        workers = get_client().scheduler_info(n_workers=-1)["workers"]
    except (ImportError, ValueError, KeyError, OSError):
        return 0
    return sum(int(w.get("nthreads", 1)) for a, w in workers.items() if a.startswith(host + ":"))


def where() -> str:
    """The Dask worker running this task (its address), or this process."""
    try:
        from distributed import get_worker

        return f"dask worker {get_worker().address}"
    except (ImportError, ValueError):  # not on a Dask worker
        return f"process {os.getpid()}"


def task_encoder(workers: int) -> EncodeMany:
    """Encode a group of cubes as concurrent tasks on the flow's task runner (``workers``
    at once, where the runner is not a Dask cluster that counts its own)."""

    def encode(recipe: Recipe, ids: list[str], out: Path) -> list[tuple[StagedSample, bool]]:
        concurrent = min(len(ids), workers)
        futures = [stage_for_publish.submit(recipe, cid, str(out), concurrent) for cid in ids]
        wait(futures)
        done = [f.result() for f in futures]
        return [(StagedSample(Path(folder)), encoded) for folder, encoded in done]

    return encode


def use_secret_token(block: str | None) -> None:
    """``HF_TOKEN`` from a Prefect Secret block when the worker has none in its environment
    (the scheduled workflow stores the repository secret there; it never travels as a flow
    parameter, which Prefect would keep in the run's record)."""
    if block and not os.environ.get("HF_TOKEN"):
        from prefect.blocks.system import Secret

        os.environ["HF_TOKEN"] = Secret.load(block).get()


@flow(name="publish-incremental", log_prints=True)
def publish_incremental_flow(
    recipe: Recipe,
    target: str,
    out: str,
    max_disk: str | None = None,
    batch_cubes: int = 100,
    workers: int = 2,
    prune: bool = False,
    hf_token_secret: str | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Publish the recipe's cubes that the target does not hold yet, batch by batch
    (``dry_run``: say what would be encoded and repaired, and stop)."""
    use_secret_token(hf_token_secret)
    log = get_run_logger()
    result = publish_incremental(
        recipe,
        target,
        out,
        max_disk=max_disk,
        batch_cubes=batch_cubes,
        workers=workers,
        prune=prune,
        encode_many=task_encoder(workers),
        log=log.info,
        dry_run=dry_run,
    )
    log.info(result.summary())
    create_markdown_artifact(
        f"# {recipe.taco.title}: incremental publish\n\n{result.summary()}\n",
        key=f"{recipe.name}-incremental",
        description="what this run encoded and committed",
    )
    return {
        "recipe": recipe.name,
        "out": out,
        "summary": result.summary(),
        "incremental": True,
        "verified": all(row["passed"] for row in result.cubes),
        **result.to_dict(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the publish-dataset flow in incremental mode from the command line."""
    p = argparse.ArgumentParser(prog="python -m flows.incremental", description=__doc__)
    p.add_argument("recipe", help="recipe name or .toml")
    p.add_argument("--to", required=True, help="hf://datasets/ORG/NAME, a folder or fsspec URL")
    p.add_argument("--out", help="work folder (default out/work/<recipe>)")
    p.add_argument("--source", help="source mirror (overrides the recipe's location)")
    p.add_argument("--cubes", type=int, help="number of cubes (overrides the recipe's count)")
    p.add_argument("--max-disk", help="cap on the work folder, e.g. 10GB")
    p.add_argument("--batch-cubes", type=int, default=100, help="cubes per commit at most")
    p.add_argument("--workers", type=int, default=2, help="cubes encoded concurrently")
    p.add_argument("--dask-address", help="an existing Dask scheduler for the encode tasks")
    p.add_argument("--prune", action="store_true", help="delete cubes no longer selected")
    a = p.parse_args(argv)
    from flows.publish_dataset import publish_dataset
    from flows.runtime import prefect_api

    with prefect_api():
        return publish_dataset(
            recipe=a.recipe,
            source=a.source,
            out=a.out or f"out/work/{Path(a.recipe).stem}",
            target=a.to,
            cubes=a.cubes,
            workers=a.workers,
            dask_address=a.dask_address,
            incremental=True,
            max_disk=a.max_disk,
            batch_cubes=a.batch_cubes,
            prune=a.prune,
        )


if __name__ == "__main__":
    print(main()["summary"])
