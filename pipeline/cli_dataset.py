"""Commands on a dataset, in data-path order: ``synth`` (a source twin), ``pack``, ``verify``,
``publish``, then ``ls`` and ``get`` to read the shards back."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pipeline.cli_cube import OverwriteOpt, check_quality
from pipeline.cli_io import (
    check_new_output,
    console,
    err_console,
    is_url,
    open_input,
    refuse_overlap,
    write_dataset,
)
from pipeline.codec.options import EncodeOptions
from pipeline.errors import CubecastError

SourceOpt = Annotated[
    str | None,
    typer.Option(
        "--source", help="override the recipe's source: folder, hf://datasets/..., http(s) URL"
    ),
]


def synth(
    dataset: Annotated[str, typer.Argument(help="deepextremecubes | dynamicearthnet")],
    out: Annotated[Path, typer.Argument(help="folder to write the source tree into")],
    cubes: Annotated[int, typer.Option(help="number of cubes / areas")] = 2,
    frames: Annotated[int | None, typer.Option(help="time steps (default: the real count)")] = None,
    size: Annotated[
        int | None, typer.Option(help="pixels per side (default: the real size)")
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Write a synthetic twin with the real dataset's layout, dtypes and attributes."""
    from pipeline.sources.twins import TWIN_WRITERS

    if dataset not in TWIN_WRITERS:
        raise CubecastError(f"{dataset}: unknown dataset (choose {', '.join(TWIN_WRITERS)})")
    kwargs: dict = {"cubes": cubes, "seed": seed, "progress": sys.stderr.isatty()}
    if frames:
        kwargs["frames"] = frames
    if size:
        kwargs["size"] = size
    for path in TWIN_WRITERS[dataset](out, **kwargs):
        console.print(str(path))


def _is_recipe(arg: str) -> bool:
    from pipeline.recipe import available_recipes

    return arg.endswith(".toml") or (not Path(arg).is_dir() and arg in available_recipes())


def pack(
    input: Annotated[str, typer.Argument(help="recipe (name or .toml), or a folder of cubes")],
    output: Annotated[Path, typer.Argument(help="output folder for the .tacozip shards")],
    source: SourceOpt = None,
    dataset_id: Annotated[
        str | None, typer.Option("--id", help="dataset id (folder input; default 'cubes')")
    ] = None,
    crf: Annotated[
        float | None,
        typer.Option(
            help="the codec's quantiser for every band: VVC QP or x265/AV1 CRF (default 12; "
            "overrides a recipe)"
        ),
    ] = None,
    psnr: Annotated[
        float | None, typer.Option(help="PSNR floor in dB for every band (overrides a recipe)")
    ] = None,
    split_size: Annotated[
        str | None, typer.Option(help="max shard size, e.g. 4GB (overrides a recipe)")
    ] = None,
    cubes: Annotated[
        int | None, typer.Option(help="number of cubes to take (recipe input; overrides count)")
    ] = None,
) -> None:
    """Encode a recipe's cubes (or every cube in a folder) and pack them into TACO shards."""
    if crf is not None and psnr is not None:
        raise CubecastError("choose one of --crf, --psnr")
    check_quality(crf, psnr)
    if output.exists() and not output.is_dir():
        raise CubecastError(f"{output}: output exists and is not a folder")
    if not _is_recipe(input):
        refuse_overlap(output, [input], "output folder")
    from pipeline.lock import probe_lock

    probe_lock(output)  # a second pack into this folder fails now, not after encoding
    if _is_recipe(input):
        if dataset_id is not None:
            raise CubecastError(f"--id applies to a folder of cubes; {input} is a recipe")
        paths = _pack_recipe(input, output, source, crf, psnr, split_size, cubes)
    else:
        if source is not None or cubes is not None:
            flag = "--source" if source is not None else "--cubes"
            raise CubecastError(f"{flag} applies to a recipe; {input} is a folder of cubes")
        paths = _pack_folder(input, output, dataset_id, crf, psnr, split_size)
    for p in paths:
        console.print(str(p))


def _progress_lines() -> Callable[[str], None] | None:
    """Without a terminal (CI, logs) progress is one stderr line per step, not a bar."""
    if sys.stderr.isatty():
        return None
    return lambda line: err_console.print(line, highlight=False)


def _pack_recipe(
    recipe: str,
    output: Path,
    source: str | None,
    crf: float | None,
    psnr: float | None,
    split_size: str | None,
    cubes: int | None,
) -> list[Path]:
    """The recipe's cubes, with the command line's overrides, as the build step packs them."""
    from pipeline.build import encode_and_pack, select_cubes, with_overrides
    from pipeline.recipe import load_recipe
    from pipeline.sources import mirror_for

    tty = sys.stderr.isatty()
    spec = with_overrides(load_recipe(recipe, location=source or ""), crf, psnr, split_size, cubes)
    refuse_overlap(output, [spec.source.location], "output folder")
    mirror = mirror_for(spec.source, progress=tty)
    ids, note = select_cubes(spec, mirror)
    err_console.print(note, highlight=False)
    return encode_and_pack(spec, output, ids, mirror, progress=tty, log=_progress_lines())


def _pack_folder(
    input: str,
    output: Path,
    dataset_id: str | None,
    crf: float | None,
    psnr: float | None,
    split_size: str | None,
) -> list[Path]:
    """Every ``.nc`` file and ``.zarr`` store of a folder, one sample each, in name order."""
    from pipeline.taco.pack import DatasetInfo, encode_sample, pack_shards

    folder = Path(input)
    if not folder.is_dir():
        raise CubecastError(f"{input}: neither a recipe nor a folder of cubes")
    inputs = sorted(p for p in folder.iterdir() if p.suffix in (".nc", ".zarr"))
    if not inputs:
        raise CubecastError(f"{input}: no .nc files or .zarr stores to pack")
    opts = EncodeOptions(crf=12.0 if crf is None else crf, psnr=psnr)
    tty = sys.stderr.isatty()
    samples = []
    for i, p in enumerate(inputs, 1):
        if not tty:
            err_console.print(f"[{i}/{len(inputs)}] encoding {p.name}", highlight=False)
        samples.append(encode_sample(open_input(str(p)), opts, cube_id=p.stem, progress=tty))
    return pack_shards(
        samples, output, DatasetInfo(id=dataset_id or "cubes"), split_size=split_size or "4GB"
    )


def verify(
    shards: Annotated[list[str], typer.Argument(help="shard files, or their folder")],
    recipe: Annotated[str, typer.Option(help="recipe name or .toml (thresholds, sources)")],
    source: SourceOpt = None,
) -> None:
    """Decode every sample from the shards, check PSNR per band against the recipe, and write
    verification.json, REPORT.md, report/*.png and the dataset card next to the shards."""
    from pipeline.build import verify_step
    from pipeline.recipe import load_recipe

    spec = load_recipe(recipe, location=source or "")
    folder = Path(shards[0]) if len(shards) == 1 and Path(shards[0]).is_dir() else None
    folder = folder or Path(shards[0]).parent
    if not is_url(shards[0]):  # the report, card and verification.json are written there
        refuse_overlap(folder, [spec.source.location], "report folder")
    result = verify_step(spec, shards if len(shards) > 1 else shards[0])
    console.print(result.summary(), highlight=False)
    if not result.passed:
        raise typer.Exit(1)


def publish_cmd(
    folder: Annotated[Path, typer.Argument(help="verified folder (shards, report, card)")],
    to: Annotated[str, typer.Option("--to", help="hf://datasets/ORG/NAME, a folder or URL")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would change")] = False,
    private: Annotated[bool, typer.Option(help="create the hub repo as private")] = False,
) -> None:
    """Upload the changed files of a verified dataset folder (token from HF_TOKEN)."""
    from pipeline.publish.targets import publish

    result = publish(
        folder, to, dry_run=dry_run, private=private, progress=lambda f: console.print(f"  {f}")
    )
    if dry_run:
        for f in result.uploaded:
            console.print(f"  would upload {f}")
    console.print(result.summary(), highlight=False)


def list_samples(
    shards: Annotated[list[str], typer.Argument(help="shard files, or a .tacocat folder")],
) -> None:
    """List the samples of TACO shards with their PSNR, bpppb and ratio."""
    import tacoreader

    source = shards[0] if len(shards) == 1 and Path(shards[0]).is_dir() else shards
    try:
        table = tacoreader.load(source).data.to_arrow().to_pylist()
    except Exception as exc:  # tacoreader raises many types for folders and corrupt shards
        what = ", ".join(shards)
        cause = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CubecastError(
            f"{what}: not readable TACO shards or a .tacocat folder "
            f"({exc.__class__.__name__}{': ' + cause if cause else ''})"
        ) from None
    out = Table("id", "shape", "min PSNR dB", "bpppb", "ratio", "split")
    for row in table:
        out.add_row(
            row["id"],
            row.get("shape", ""),
            f"{row.get('psnr_min', float('nan')):.2f}",
            f"{row.get('bpppb', float('nan')):.3f}",
            f"{row.get('ratio', 0):.1f}x",
            row.get("split") or "",
        )
    console.print(out)


def get(
    shard: Annotated[str, typer.Argument(help="shard file, URL or .tacocat folder")],
    sample: Annotated[str, typer.Argument(help="sample id")],
    output: Annotated[Path, typer.Argument(help="output netCDF file (or .zarr store)")],
    variables: Annotated[
        list[str] | None, typer.Option("--var", "-v", help="decode only these variables")
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Decode one sample of a shard to netCDF (or a .zarr store)."""
    from pipeline.taco.read import open_sample

    refuse_overlap(output, [shard])
    check_new_output(output, overwrite)
    write_dataset(open_sample(shard, sample, variables or None), output)
    console.print(str(output))
