"""Commands that run the whole publish-dataset flow through Prefect: ``run``, ``demo``,
``server``, ``deploy`` and ``trigger``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pipeline.cli_dataset import SourceOpt
from pipeline.cli_io import console, err_console, is_url, refuse_overlap, writable_folder


def run(
    recipe: Annotated[str, typer.Argument(help="recipe name or .toml")] = "dynamicearthnet",
    source: SourceOpt = None,
    out: Annotated[str | None, typer.Option(help="work/shard folder")] = None,
    to: Annotated[str | None, typer.Option("--to", help="publish target")] = None,
    workers: Annotated[int, typer.Option(min=1, help="cubes encoded concurrently")] = 2,
    dask: Annotated[bool, typer.Option(help="run on a Dask LocalCluster")] = False,
    dask_address: Annotated[str | None, typer.Option(help="existing Dask scheduler")] = None,
    synthesize: Annotated[bool, typer.Option(help="write a twin at --source if absent")] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="print the plan (new, changed, unchanged, to repair) and encode nothing; "
            "--single-shot: build and verify, upload nothing",
        ),
    ] = False,
    cubes: Annotated[int | None, typer.Option(help="number of cubes (overrides count)")] = None,
    incremental: Annotated[
        bool,
        typer.Option(
            "--incremental/--single-shot",
            help="batches, one commit each, the target's index (checked against what the "
            "target holds) says what to skip; --single-shot: encode all into --out, then mirror",
        ),
    ] = True,
    max_disk: Annotated[
        str | None, typer.Option(help="cap on the work folder (incremental), e.g. 10GB")
    ] = None,
    batch_cubes: Annotated[int, typer.Option(min=1, help="cubes per commit (--incremental)")] = 100,
    prune: Annotated[
        bool, typer.Option(help="drop published cubes no longer selected (--incremental)")
    ] = False,
) -> None:
    """Run the publish-dataset flow once, in this process (Prefect records it)."""
    batches = {"max_disk": max_disk, "batch_cubes": batch_cubes, "prune": prune}
    _run_flow(
        recipe=recipe,
        source=source,
        out=out,
        target=to,
        cubes=cubes,
        workers=workers,
        runner="dask" if dask else "processes",
        dask_address=dask_address,
        synthesize=synthesize,
        dry_run=dry_run,
        incremental=incremental,
        **(batches if incremental else {}),
    )


def demo(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("out"),
    dataset: Annotated[str, typer.Option(help="which recipe to demo")] = "dynamicearthnet",
) -> None:
    """The main job on the embedded default: write a small synthetic twin, then run the
    publish-dataset flow (local Prefect, local output folder) on it."""
    _run_flow(
        recipe=dataset,
        source=str(out / "twins" / dataset),
        out=str(out / "work" / dataset),
        target=str(out / "published" / dataset),
        synthesize=True,
        incremental=True,
    )


def server(
    host: Annotated[str, typer.Option(help="Prefect server address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Prefect server port")] = 4200,
    local_server: Annotated[
        bool, typer.Option(help="start a local Prefect server (off: use PREFECT_API_URL)")
    ] = True,
) -> None:
    """Start a local Prefect server (SQLite) and serve the publish deployments.

    Prints the commands (with the PREFECT_API_URL export) that run each one from another
    shell."""
    from flows.serve import serve_deployments

    serve_deployments(host, port, local_server)


def deploy(
    check: Annotated[
        bool, typer.Option("--check", help="only compare; exit 1 if a deployment is stale")
    ] = False,
) -> None:
    """Bring the work-pool deployments of prefect.yaml up to date with the flow's code.

    On the server at PREFECT_API_URL: creates the work pool (type process) if missing, runs
    `prefect deploy --all` from the project folder, then checks each deployment's parameters,
    entrypoint, pool, pull step and schedule against the code; exit 1 if one is stale."""
    from flows.deploy import deploy as deploy_all

    if any(deploy_all(check, _echo).values()):
        raise typer.Exit(1)


def trigger(
    deployment: Annotated[
        str,
        typer.Argument(help="recipe (deployment publish-dataset/publish-<recipe>) or flow/name"),
    ] = "dynamicearthnet",
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="flow parameter key=value (JSON values parsed)"),
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="wait for the run; exit 1 unless it completes")
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=1, help="--watch: seconds before giving up on the run")
    ] = 6 * 3600,
    queue_unserved: Annotated[
        bool,
        typer.Option("--queue-unserved", help="create the run even if nothing serves it now"),
    ] = False,
) -> None:
    """Run a served deployment on the Prefect server at PREFECT_API_URL.

    No URL, no server, no such deployment or nothing serving it (start `cubecast server`):
    one line in seconds, before any flow run is created. --watch ends at --timeout, or when
    the server stays unreachable for 30 s."""
    from flows.trigger import trigger as trigger_run

    params = dict(_key_value(p) for p in param or [])
    state = trigger_run(deployment, params, watch, timeout, queue_unserved, _echo)
    if state is not None and not state.is_completed():
        err_console.print(f"flow run ended {state.name}: {state.message or ''}", highlight=False)
        raise typer.Exit(1)


def _key_value(text: str) -> tuple[str, object]:
    """``key=value`` as Prefect's ``-p`` reads it: the value as JSON if it parses, else text."""
    from pipeline.errors import CubecastError

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise CubecastError(f"-p {text}: expected key=value")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _echo(line: str) -> None:
    console.print(line, highlight=False, soft_wrap=True)


def _run_flow(**params: object) -> dict:
    """Run publish-dataset against one Prefect API (a temporary local server when none is
    configured) and print a summary table; a failed verification exits 1."""
    import time

    check_flow_args(**params)  # a wrong recipe or folder: one line now, before Prefect starts
    from flows.runtime import prefect_api

    t0 = time.monotonic()
    with prefect_api() as api:
        from flows.publish_dataset import publish_dataset

        err_console.print(f"Prefect API: {api}", highlight=False)
        result = publish_dataset(**params)
    if params.get("incremental"):
        print_incremental(result, time.monotonic() - t0)
        return result
    print_summary(result, time.monotonic() - t0)
    return result


def cube_table(rows: list[dict]) -> Table:
    table = Table("cube", "split", "min PSNR dB", "bpppb", "ratio", "verdict")
    for row in rows:
        psnr = row.get("min_psnr_db")
        table.add_row(
            row["cube"],
            row.get("split") or "-",
            "lossless" if psnr is None or psnr == float("inf") else f"{psnr:.2f}",
            f"{row['bpppb']:.3f}",
            f"{row['ratio']:.1f}x",
            "pass" if row["passed"] else "FAIL",
        )
    return table


def print_incremental(result: dict, seconds: float) -> None:
    """What a batch run encoded, verified and committed: a table of its new cubes (verified
    from the shards before each commit), then where the dataset is."""
    rows = result.get("cubes", [])
    if rows:
        console.print(cube_table(rows))
        verdict = "PASS" if all(r["passed"] for r in rows) else "FAIL"
        console.print(f"verified:  {verdict}, {len(rows)} cubes", highlight=False)
    console.print(f"{result.get('summary', '')} in {seconds:.0f} s", highlight=False)
    target = str(result.get("target", ""))
    if not result.get("dry_run"):
        console.print(
            f"published: {target}: {len(result.get('uploaded', []))} files uploaded "
            f"(shards, .tacocat/, README.md card, REPORT.md)",
            highlight=False,
        )


def check_flow_args(
    recipe: str,
    source: str | None = None,
    out: str | None = None,
    target: str | None = None,
    synthesize: bool = False,
    incremental: bool = True,
    max_disk: str | None = None,
    **_: object,
) -> None:
    """What publish-dataset would refuse after Prefect's start-up (a minute on a cold
    machine), refused here in a second with one line: the recipe, the source, the work and
    target folders (writable, and not inside the source), the incremental options. Nothing
    is written; folders are created by the flow."""
    from pipeline.errors import CubecastError
    from pipeline.recipe import load_recipe

    spec = load_recipe(recipe, location=source or "")
    location = spec.source.location
    if synthesize and source and not Path(source).exists():
        from pipeline.sources.twins import TWIN_WRITERS

        if recipe not in TWIN_WRITERS:
            raise CubecastError(
                f"--synthesize writes twins of {', '.join(TWIN_WRITERS)} only, not {recipe}"
            )
        writable_folder(source, "source folder")
    elif not is_url(location) and not Path(location).exists():
        raise CubecastError(
            f"{location}: source folder of recipe {spec.name} does not exist (give --source, "
            "or --synthesize to write a twin there)"
        )
    if max_disk:
        from pipeline.publish.disk import parse_size

        parse_size(max_disk, "--max-disk")
    out = out or f"out/{spec.name}"
    target = target or f"out/published/{spec.name}"
    writable_folder(out, "work folder")
    refuse_overlap(out, [location], "work folder")
    if not is_url(target):
        writable_folder(target, "publish target")
        refuse_overlap(target, [location], "publish target")


def print_summary(result: dict, seconds: float) -> None:
    """The flow's result as a table of cubes and a few lines, not a raw dict."""
    console.print(cube_table(result.get("cubes", [])))
    out = Path(str(result.get("out", ".")))
    console.print(f"{result.get('summary', '')} in {seconds:.0f} s", highlight=False)
    shards = [Path(str(s)).name for s in result.get("shards", [])]
    tacocat = " + .tacocat/" if (out / ".tacocat").is_dir() else ""
    console.print(f"shards:    {out}/ {', '.join(shards)}{tacocat}", highlight=False)
    console.print(f"report:    {out / 'REPORT.md'}, card: {out / 'README.md'}", highlight=False)
    verb = "would upload" if result.get("dry_run") else "uploaded"
    console.print(
        f"published: {result.get('target')}: {len(result.get('uploaded', []))} files {verb}, "
        f"{len(result.get('unchanged', []))} unchanged",
        highlight=False,
    )
