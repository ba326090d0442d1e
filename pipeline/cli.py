"""The ``cubecast`` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
import xarray as xr
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.codec.encode import decode_cube, encode_cube
from pipeline.codec.encoded import EncodedCube
from pipeline.codec.metrics import bpppb
from pipeline.codec.planning import EncodeOptions
from pipeline.errors import CubecastError
from pipeline.recipe import PSNR_MAX

app = typer.Typer(
    help="Compress Earth-observation cubes as video streams, pack them into TACO shards, "
    "verify and publish.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def open_input(path: str) -> xr.Dataset:
    """netCDF, zarr, or anything xarray opens; lazily, so large cubes stream."""
    p = Path(path)
    if not p.exists() and "://" not in path:
        raise CubecastError(f"{path}: no such file or folder")
    try:
        if p.is_dir() or path.endswith(".zarr"):
            return xr.open_zarr(path, chunks=None, decode_coords="all")
        return xr.open_dataset(path, decode_coords="all")
    except CubecastError:
        raise
    except Exception as exc:  # xarray raises many types; the user needs the path and cause
        raise CubecastError(f"{path}: cannot open as a dataset ({exc})") from exc


def write_netcdf(ds: xr.Dataset, out: Path) -> None:
    """Write through a temporary name so a failure leaves no partial file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    try:
        ds.to_netcdf(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def check_quality(crf: float | None, psnr: float | None) -> None:
    """Refuse rate settings the encoder would misread or silently cap, naming the option."""
    if crf is not None and not 0 <= crf <= 63:
        raise CubecastError(
            f"--crf {crf:g}: the quantiser range is 0 to 63 (x265's CRF stops at 51; lower "
            "is better)"
        )
    if psnr is not None and not 0 < psnr <= PSNR_MAX:
        if psnr <= 0:
            raise CubecastError(f"--psnr {psnr:g}: a PSNR floor must be above 0 dB")
        raise CubecastError(
            f"--psnr {psnr:g}: above {PSNR_MAX:g} dB lossy x265 cannot reach; use --lossless"
        )


@app.command()
def encode(
    input: Annotated[str, typer.Argument(help="netCDF file or zarr store")],
    output: Annotated[Path, typer.Argument(help="output folder (or .tar file)")],
    crf: Annotated[
        float | None,
        typer.Option(help="the codec's quantiser: VVC QP (0-63) or x265/AV1 CRF (0-51/63)"),
    ] = None,
    lossless: Annotated[
        bool, typer.Option("--lossless", help="FFV1 16-bit for every band")
    ] = False,
    psnr: Annotated[
        float | None,
        typer.Option(
            help="PSNR floor in dB for every band: the codec and quantiser that "
            "meet it in the fewest bytes"
        ),
    ] = None,
    preset: Annotated[
        str, typer.Option(help="x265 preset name (mapped onto VVC's and libaom's speeds)")
    ] = "medium",
    keyint: Annotated[int, typer.Option(min=1, help="max frames between keyframes")] = 250,
    workers: Annotated[
        int, typer.Option(min=1, help="PSNR-target streams whose CRF searches run concurrently")
    ] = 1,
    codec: Annotated[
        str,
        typer.Option(
            help="auto (VVC or x265, whichever needs fewer bytes), libvvenc, libx265 or "
            "libaom-av1 (VVC and AV1 need the ffmpeg engine)"
        ),
    ] = "auto",
    decorrelate: Annotated[
        str,
        typer.Option(help="auto (KLT where bands correlate), klt or none"),
    ] = "auto",
    engine: Annotated[
        str,
        typer.Option(
            help="auto (ffmpeg when a binary exists), ffmpeg (command line) or pyav (in-process)"
        ),
    ] = "auto",
) -> None:
    """Encode a cube into video streams plus a manifest.

    The cube is read a few frames at a time and all its streams are encoded in one pass,
    written to disk as they grow, so memory does not depend on the number of frames.
    """
    if sum(x is not None and x is not False for x in (crf, psnr, lossless or None)) > 1:
        raise CubecastError("choose one of --crf, --psnr, --lossless")
    check_quality(crf, psnr)
    ds = open_input(input)
    opts = EncodeOptions(
        crf=12.0 if crf is None else crf,
        psnr=psnr,
        lossless=lossless,
        preset=preset,
        keyint=keyint,
        workers=workers,
        codec=codec,
        engine=engine,
        decorrelate=decorrelate,
    )
    enc = encode_cube(
        ds, opts, cube_id=Path(input).stem, progress=sys.stderr.isatty(), workdir=output.parent
    )
    if output.suffix == ".tar":
        tmp = output.with_name(f".{output.name}.part")
        tmp.write_bytes(enc.to_bytes())
        os.replace(tmp, output)
    else:
        enc.to_folder(output)
    console.print(
        f"{output}: {enc.nbytes} bytes, {bpppb(enc):.3f} bpppb, {len(enc.manifest.streams)} streams"
    )


@app.command()
def decode(
    input: Annotated[Path, typer.Argument(help="encoded cube folder or .tar")],
    output: Annotated[Path, typer.Argument(help="output netCDF file")],
    variables: Annotated[
        list[str] | None, typer.Option("--var", "-v", help="decode only these variables")
    ] = None,
) -> None:
    """Decode an encoded cube to netCDF with the original dtypes, attrs and encodings."""
    enc = EncodedCube.open(input)
    ds = decode_cube(enc, variables=variables or None)
    write_netcdf(ds, output)
    console.print(f"{output}: {', '.join(map(str, ds.data_vars))}")


@app.command()
def info(input: Annotated[Path, typer.Argument(help="encoded cube folder or .tar")]) -> None:
    """Show an encoded cube's streams, sizes, bpppb, settings and where the bytes go."""
    enc = EncodedCube.open(input)
    m = enc.manifest
    h, w = m.frame_shape
    pixels = m.n_frames * h * w * len(m.channels)
    console.print(
        f"cube {m.cube_id}: {m.n_frames} x {h} x {w}, {len(m.channels)} bands, "
        f"{enc.nbytes} bytes, {bpppb(enc):.3f} bpppb"
    )
    table = Table(
        "stream", "kind", "codec", "pix_fmt", "planes", "frames", "bytes", "bpppb", "settings"
    )
    for s in m.streams:
        settings = (
            "lossless"
            if s.lossless
            else (f"crf={s.crf:g} preset={s.preset}" if s.crf is not None else "")
        )
        stored = len(s.stored_frames(m.n_frames)) if s.kind != "mask" else m.n_frames
        table.add_row(
            s.name,
            s.kind,
            s.codec,
            s.pix_fmt,
            ", ".join(s.planes),
            f"{stored}/{m.n_frames}",
            str(s.nbytes),
            f"{8 * s.nbytes / (m.n_frames * h * w * len(s.planes)):.3f}",
            settings,
        )
    console.print(table)
    for t in m.transforms:
        console.print(
            f"KLT group {t.name}: {', '.join(t.channels)} -> {len(t.components)} components"
        )
    kinds = {
        "video streams": sum(s.nbytes for s in m.streams if s.kind != "mask"),
        "masks": sum(s.nbytes for s in m.streams if s.kind == "mask"),
        "manifest": len(m.to_bytes()),
        "aux.nc": m.aux.nbytes if m.aux else 0,
    }
    overhead = Table("bytes by kind", "bytes", "bpppb", "share")
    for kind, n in kinds.items():
        overhead.add_row(kind, str(n), f"{8 * n / pixels:.4f}", f"{100 * n / enc.nbytes:.1f} %")
    console.print(overhead)


def _is_recipe(arg: str) -> bool:
    from pipeline.recipe import available_recipes

    return arg.endswith(".toml") or (not Path(arg).is_dir() and arg in available_recipes())


SourceOpt = Annotated[
    str | None,
    typer.Option(
        "--source", help="override the recipe's source: folder, hf://datasets/..., http(s) URL"
    ),
]


@app.command()
def pack(
    input: Annotated[str, typer.Argument(help="recipe (name or .toml), or a folder of cubes")],
    output: Annotated[Path, typer.Argument(help="output folder for the .tacozip shards")],
    source: SourceOpt = None,
    dataset_id: Annotated[
        str | None, typer.Option("--id", help="dataset id (folder input; default 'cubes')")
    ] = None,
    crf: Annotated[
        float | None, typer.Option(help="x265 CRF for every band (default 12; overrides a recipe)")
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
    from pipeline.taco.pack import DatasetInfo, encode_sample, pack_shards

    if crf is not None and psnr is not None:
        raise CubecastError("choose one of --crf, --psnr")
    check_quality(crf, psnr)
    from pipeline.lock import probe_lock

    probe_lock(output)  # a second pack into this folder fails now, not after encoding
    tty = sys.stderr.isatty()
    say = None if tty else (lambda line: err_console.print(line, highlight=False))
    if _is_recipe(input):
        if dataset_id is not None:
            raise CubecastError(f"--id applies to a folder of cubes; {input} is a recipe")
        from pipeline.build import encode_and_pack, select_cubes, with_overrides
        from pipeline.recipe import load_recipe
        from pipeline.sources import mirror_for

        spec = with_overrides(
            load_recipe(input, location=source or ""), crf, psnr, split_size, cubes
        )
        mirror = mirror_for(spec.source, progress=tty)
        ids, note = select_cubes(spec, mirror)
        err_console.print(note, highlight=False)
        paths = encode_and_pack(spec, output, ids, mirror, progress=tty, log=say)
    else:
        if source is not None or cubes is not None:
            flag = "--source" if source is not None else "--cubes"
            raise CubecastError(f"{flag} applies to a recipe; {input} is a folder of cubes")
        folder = Path(input)
        if not folder.is_dir():
            raise CubecastError(f"{input}: neither a recipe nor a folder of cubes")
        inputs = sorted(p for p in folder.iterdir() if p.suffix in (".nc", ".zarr"))
        if not inputs:
            raise CubecastError(f"{input}: no .nc files or .zarr stores to pack")
        opts = EncodeOptions(crf=12.0 if crf is None else crf, psnr=psnr)
        samples = []
        for i, p in enumerate(inputs, 1):
            if not tty:
                err_console.print(f"[{i}/{len(inputs)}] encoding {p.name}", highlight=False)
            samples.append(encode_sample(open_input(str(p)), opts, cube_id=p.stem, progress=tty))
        paths = pack_shards(
            samples, output, DatasetInfo(id=dataset_id or "cubes"), split_size=split_size or "4GB"
        )
    for p in paths:
        console.print(str(p))


@app.command()
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
    result = verify_step(spec, shards if len(shards) > 1 else shards[0])
    console.print(result.summary(), highlight=False)
    if not result.passed:
        raise typer.Exit(1)


@app.command("publish")
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


@app.command()
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


@app.command()
def run(
    recipe: Annotated[str, typer.Argument(help="recipe name or .toml")] = "dynamicearthnet",
    source: SourceOpt = None,
    out: Annotated[str | None, typer.Option(help="work/shard folder")] = None,
    to: Annotated[str | None, typer.Option("--to", help="publish target")] = None,
    workers: Annotated[int, typer.Option(min=1, help="cubes encoded concurrently")] = 2,
    dask: Annotated[bool, typer.Option(help="run on a Dask LocalCluster")] = False,
    dask_address: Annotated[str | None, typer.Option(help="existing Dask scheduler")] = None,
    synthesize: Annotated[bool, typer.Option(help="write a twin at --source if absent")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run")] = False,
    cubes: Annotated[int | None, typer.Option(help="number of cubes (overrides count)")] = None,
) -> None:
    """Run the publish-dataset flow once, in this process (Prefect records it)."""
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
    )


def _run_flow(**params: object) -> dict:
    """Run publish-dataset against one Prefect API (a temporary local server when none is
    configured) and print a summary table; a failed verification exits 1."""
    import time

    from flows.runtime import prefect_api

    t0 = time.monotonic()
    with prefect_api() as api:
        from flows.publish_dataset import publish_dataset

        err_console.print(f"Prefect API: {api}", highlight=False)
        result = publish_dataset(**params)
    print_summary(result, time.monotonic() - t0)
    return result


def print_summary(result: dict, seconds: float) -> None:
    """The flow's result as a table of cubes and a few lines, not a raw dict."""
    table = Table("cube", "split", "min PSNR dB", "bpppb", "ratio", "verdict")
    for row in result.get("cubes", []):
        psnr = row.get("min_psnr_db")
        table.add_row(
            row["cube"],
            row.get("split") or "-",
            "lossless" if psnr is None or psnr == float("inf") else f"{psnr:.2f}",
            f"{row['bpppb']:.3f}",
            f"{row['ratio']:.1f}x",
            "pass" if row["passed"] else "FAIL",
        )
    console.print(table)
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


@app.command()
def server(
    host: Annotated[str, typer.Option(help="Prefect server address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Prefect server port")] = 4200,
    local_server: Annotated[
        bool, typer.Option(help="start a local Prefect server (off: use PREFECT_API_URL)")
    ] = True,
) -> None:
    """Start a local Prefect server (SQLite) and serve the publish deployments."""
    from flows.serve import serve_deployments

    serve_deployments(host, port, local_server)


@app.command("ls")
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


@app.command()
def get(
    shard: Annotated[str, typer.Argument(help="shard file, URL or .tacocat folder")],
    sample: Annotated[str, typer.Argument(help="sample id")],
    output: Annotated[Path, typer.Argument(help="output netCDF file")],
    variables: Annotated[
        list[str] | None, typer.Option("--var", "-v", help="decode only these variables")
    ] = None,
) -> None:
    """Decode one sample of a shard to netCDF."""
    from pipeline.taco.read import open_sample

    write_netcdf(open_sample(shard, sample, variables or None), output)
    console.print(str(output))


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("out"),
    dataset: Annotated[str, typer.Option(help="which recipe to demo")] = "dynamicearthnet",
) -> None:
    """The main job on the embedded default: write a small synthetic twin, then run the
    publish-dataset flow (local Prefect, local output folder) on it."""
    _run_flow(
        recipe=dataset,
        source=str(out / "twins" / dataset),
        out=str(out / "shards" / dataset),
        target=str(out / "published" / dataset),
        synthesize=True,
    )


@app.command("demo-codec")
def demo_codec(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("out/demo"),
    psnr: Annotated[float, typer.Option(help="PSNR floor in dB for every band")] = 45.0,
) -> None:
    """Encode the bundled real sample cubes (or a synthetic one) at a PSNR floor and report."""
    import shutil

    from pipeline.codec.metrics import compare, compression_ratio
    from pipeline.sources.demo import demo_cubes

    table = Table("cube", "bands", "min PSNR dB", "masks exact", "bpppb", "ratio", "folder")
    for name, ds in demo_cubes():
        enc = encode_cube(ds, EncodeOptions(psnr=psnr), cube_id=name, progress=sys.stderr.isatty())
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        enc.to_folder(target)
        q = compare(ds, decode_cube(EncodedCube.from_folder(target)))
        lossy = [b.psnr for b in q if b.role == "continuous"]
        exact = all(b.exact for b in q if b.role == "categorical")
        table.add_row(
            name,
            str(len(q)),
            f"{min(lossy):.2f}",
            str(exact),
            f"{bpppb(enc):.3f}",
            f"{compression_ratio(ds, enc):.1f}x",
            str(target),
        )
    console.print(table)


# Import names of the `publish` extra: a command that needs one of them names the extra.
PUBLISH_MODULES = frozenset(
    "prefect prefect_dask dask distributed rasterio rioxarray pyproj matplotlib skimage "
    "huggingface_hub tacotoolbox fsspec zarr ffmpeg imageio_ffmpeg yaml fastapi sqlalchemy".split()
)


def main() -> None:
    from pipeline.sources.download import network_errors

    try:
        app()
    except CubecastError as exc:
        _fail(str(exc))
    except network_errors() as exc:  # anything the pipeline did not wrap: still one line
        _fail(f"network error: {exc.__class__.__name__}: {exc}")
    except ModuleNotFoundError as exc:  # the reader install running a pipeline command
        if (exc.name or "").split(".")[0] not in PUBLISH_MODULES:
            raise
        command = next((a for a in sys.argv[1:] if not a.startswith("-")), "this command")
        _fail(
            f"cubecast {command} needs {exc.name}, part of the publish extra: "
            + escape("pip install 'cubecast[publish]'")
        )


def _fail(message: str) -> None:
    token = os.environ.get("HF_TOKEN")
    if token:
        message = message.replace(token, "***")
    line = " ".join(message.split())  # one line, whatever the cause text held
    err_console.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
