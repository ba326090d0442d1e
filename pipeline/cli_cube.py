"""Commands on one cube: ``encode``, ``decode``, ``info`` and ``demo-codec``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pipeline.cli_io import (
    check_new_output,
    console,
    open_input,
    refuse_overlap,
    write_dataset,
)
from pipeline.codec.chunkcodecs import chunk_codec
from pipeline.codec.decode import decode_cube
from pipeline.codec.encode import encode_cube
from pipeline.codec.encoded import EncodedCube
from pipeline.codec.errorbound import MaxError
from pipeline.codec.manifest import Manifest
from pipeline.codec.metrics import bpppb
from pipeline.codec.options import EncodeOptions
from pipeline.codec.readcost import read_costs
from pipeline.errors import CubecastError
from pipeline.recipe import PSNR_MAX

PsnrFloorOpt = Annotated[
    float | None,
    typer.Option(
        help="PSNR floor in dB for every band: the codec and quantiser that "
        "meet it in the fewest bytes"
    ),
]
CodecOpt = Annotated[
    str,
    typer.Option(
        help="auto (VVC, AV1 or x265, whichever needs fewer bytes), libvvenc, libx265 or "
        "libaom-av1 (VVC and AV1 need the ffmpeg engine)"
    ),
]
DecorrelateOpt = Annotated[str, typer.Option(help="auto (KLT where bands correlate), klt or none")]
HedgeOpt = Annotated[
    bool,
    typer.Option(
        help="with --psnr, a small cube's final stream also encoded a little coarser on "
        "the core its encoder leaves idle; the smaller that meets the floor is kept"
    ),
]
AccessOpt = Annotated[
    str,
    typer.Option(
        help="what a reader can read alone, paid for in bits: whole (cubes), windows (a "
        "keyframe every 16 frames), bands (a stream per band, no KLT) or windows+bands"
    ),
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="replace the output file if it exists (never an input)")
]
EngineOpt = Annotated[
    str,
    typer.Option(
        help="auto (ffmpeg when a binary exists), ffmpeg (command line) or pyav (in-process)"
    ),
]


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


def check_max_error(text: str | None, lossless: bool, crf: float | None) -> MaxError | None:
    """``--max-error`` parsed (``0.01`` or ``0.1%``), refused in one line: not finite or
    not above 0, a percentage above 100, or with --lossless / --crf (the bound sets the
    video's quality)."""
    if text is None:
        return None
    try:
        bound = MaxError.parse(text, "--max-error")
    except CubecastError as exc:
        raise CubecastError(str(exc)) from None
    if lossless:
        raise CubecastError("--max-error: --lossless is exact already; choose one of the two")
    if crf is not None:
        raise CubecastError("--max-error sets the video's quality: drop --crf (--psnr may stay)")
    return bound


CrfOpt = Annotated[
    float | None,
    typer.Option(help="the codec's quantiser: VVC QP (0-63) or x265/AV1 CRF (0-51/63)"),
]
MaxErrorOpt = Annotated[
    str | None,
    typer.Option(
        "--max-error",
        help="bound on every valid value's absolute error: in the band's units (0.01) or "
        "a percentage of each band's valid range (0.1%); with --psnr both hold",
    ),
]


def encode(
    input: Annotated[str, typer.Argument(help="netCDF file or zarr store")],
    output: Annotated[Path, typer.Argument(help="output folder (or .tar file)")],
    crf: CrfOpt = None,
    lossless: Annotated[
        bool, typer.Option("--lossless", help="FFV1 16-bit for every band")
    ] = False,
    psnr: PsnrFloorOpt = None,
    max_error: MaxErrorOpt = None,
    preset: Annotated[
        str, typer.Option(help="x265 preset name (mapped onto VVC's and libaom's speeds)")
    ] = "medium",
    keyint: Annotated[int, typer.Option(min=1, help="max frames between keyframes")] = 250,
    workers: Annotated[
        int, typer.Option(min=1, help="PSNR-target streams whose CRF searches run concurrently")
    ] = 1,
    codec: CodecOpt = "auto",
    decorrelate: DecorrelateOpt = "auto",
    access: AccessOpt = "whole",
    engine: EngineOpt = "auto",
    hedge: HedgeOpt = True,
    overwrite: OverwriteOpt = False,
) -> None:
    """Encode a cube into video streams plus a manifest.

    The cube is read a few frames at a time and all its streams are encoded in one pass,
    written to disk as they grow, so memory does not depend on the number of frames.
    """
    if sum(x is not None and x is not False for x in (crf, psnr, lossless or None)) > 1:
        raise CubecastError("choose one of --crf, --psnr, --lossless")
    check_quality(crf, psnr)
    bound = check_max_error(max_error, lossless, crf)
    refuse_overlap(output, [input])
    check_new_output(output, overwrite, folder_ok=output.suffix != ".tar")
    ds = open_input(input)
    opts = EncodeOptions(
        crf=12.0 if crf is None else crf,
        psnr=psnr,
        lossless=lossless,
        max_error=bound,
        preset=preset,
        keyint=keyint,
        workers=workers,
        codec=codec,
        engine=engine,
        decorrelate=decorrelate,
        access=access,
        hedge=hedge,
    )
    enc = encode_cube(
        ds, opts, cube_id=Path(input).stem, progress=sys.stderr.isatty(), workdir=output.parent
    )
    _save(enc, output)
    console.print(
        f"{output}: {enc.nbytes} bytes, {bpppb(enc):.3f} bpppb, {len(enc.manifest.streams)} streams"
    )


def _save(enc: EncodedCube, output: Path) -> None:
    """A ``.tar`` appears whole (written under a temporary name); anything else is a folder."""
    if output.suffix == ".tar":
        tmp = output.with_name(f".{output.name}.part")
        try:
            tmp.write_bytes(enc.to_bytes())
            os.replace(tmp, output)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        try:
            enc.to_folder(output)
        except FileExistsError:  # appeared while encoding
            raise CubecastError(f"{output}: output folder exists and is not empty") from None


def decode(
    input: Annotated[Path, typer.Argument(help="encoded cube folder or .tar")],
    output: Annotated[Path, typer.Argument(help="output netCDF file (or .zarr store)")],
    variables: Annotated[
        list[str] | None, typer.Option("--var", "-v", help="decode only these variables")
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Decode an encoded cube to netCDF (or a .zarr store) with the original dtypes, attrs
    and encodings."""
    refuse_overlap(output, [input])
    check_new_output(output, overwrite)
    enc = EncodedCube.open(input)
    ds = decode_cube(enc, variables=variables or None)
    write_dataset(ds, output)
    console.print(f"{output}: {', '.join(map(str, ds.data_vars))}")


def info(input: Annotated[Path, typer.Argument(help="encoded cube folder or .tar")]) -> None:
    """Show an encoded cube's streams, each band's mode and the quality it reached, sizes,
    bpppb and where the bytes go."""
    enc = EncodedCube.open(input)
    m = enc.manifest
    h, w = m.frame_shape
    console.print(
        f"cube {m.cube_id}: {m.n_frames} x {h} x {w}, {len(m.channels)} bands, "
        f"{enc.nbytes} bytes, {bpppb(enc):.3f} bpppb"
    )
    console.print(_stream_table(m))
    for t in m.transforms:
        console.print(
            f"KLT group {t.name}: {', '.join(t.channels)} -> {len(t.components)} components"
        )
    console.print(_quality_table(m))
    console.print(_bytes_by_kind(enc))
    console.print(_read_cost_table(enc))


def _quality_table(m: Manifest) -> Table:
    """Per band: what it was encoded to (PSNR floor, quantiser, lossless, error bound), what
    the encoder measured on the decoded cube, and the stream and codec that carry it."""
    streams = {s.name: s for s in m.streams}
    comps = {t.name: t.components[0].stream for t in m.transforms if t.components}
    table = Table("band", "mode", "asked", "reached", "stream", "codec", title="quality per band")
    for c in m.channels:
        name = c.stream or comps.get(c.transform or "") or (c.words or [None])[0]
        s = streams.get(name or "")
        if c.max_error is not None:
            mode, asked = "max error", f"|error| <= {c.max_error:.6g}"
            reached = "" if c.max_error_reached is None else f"{c.max_error_reached:.6g}"
        elif s is None:
            mode, asked, reached = "masks only", "", ""
        elif s.lossless:
            mode, asked, reached = "lossless", "exact", "exact"
        elif c.psnr_floor is not None:
            mode, asked = "PSNR floor", f">= {c.psnr_floor:g} dB"
            reached = "exact" if c.psnr is None else f"{c.psnr:.2f} dB"
        else:
            mode, asked = "quantiser", f"crf {s.crf:g}" if s.crf is not None else ""
            reached = "" if c.psnr is None else f"{c.psnr:.2f} dB"
        codec = "" if s is None else s.codec
        if s is not None and s.crf is not None and not s.lossless:
            codec += f" {s.crf:g}" + (f" x{s.gain:.3f}" if s.gain != 1 else "")
        table.add_row(c.name, mode, asked, reached, "" if s is None else s.name, codec)
    return table


def _read_cost_table(enc: EncodedCube) -> Table:
    """What a reader pays for part of the cube (the encode's ``--access`` trades bits for it)."""
    table = Table("read", "bytes", "share of cube", "frames decoded", title="read cost")
    for c in read_costs(enc):
        table.add_row(c.what, str(c.nbytes), f"{100 * c.share:.1f} %", str(c.frames))
    return table


def _stream_table(m: Manifest) -> Table:
    """One row per stream: codec, planes, stored frames, bytes, bpppb and rate settings."""
    h, w = m.frame_shape
    table = Table(
        "stream", "kind", "codec", "pix_fmt", "planes", "frames", "bytes", "bpppb", "settings"
    )
    for s in m.streams:
        settings = (
            "lossless"
            if s.lossless
            else (f"crf={s.crf:g} preset={s.preset}" if s.crf is not None else "")
        )
        if chunk_codec(s.codec) is not None:
            settings += f", chunks of {s.keyint} frames"
        if s.carrier == "raw":
            settings += ", raw carrier"
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
    return table


def _bytes_by_kind(enc: EncodedCube) -> Table:
    """Where the bytes go: video streams, class layers (zstd), masks, manifest and aux, each
    as bpppb and share."""
    m = enc.manifest
    h, w = m.frame_shape
    pixels = m.n_frames * h * w * len(m.channels)
    chunked = {s.name for s in m.streams if chunk_codec(s.codec) is not None}
    kinds = {
        "video streams": sum(s.nbytes for s in m.streams if s.name not in chunked),
        "class layers (zstd)": sum(
            s.nbytes for s in m.streams if s.kind == "categorical" and s.name in chunked
        ),
        "masks": sum(s.nbytes for s in m.streams if s.kind == "mask"),
        "corrections (max error)": sum(s.nbytes for s in m.streams if s.kind == "correction"),
        "manifest": len(m.to_bytes()),
        "aux.nc": m.aux.nbytes if m.aux else 0,
    }
    overhead = Table("bytes by kind", "bytes", "bpppb", "share")
    for kind, n in kinds.items():
        overhead.add_row(kind, str(n), f"{8 * n / pixels:.4f}", f"{100 * n / enc.nbytes:.1f} %")
    return overhead


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
