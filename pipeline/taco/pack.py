"""Packing encoded cubes into TACO shards (one FOLDER sample per cube, one child per file)."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from pipeline.codec import jsonvalues
from pipeline.codec.encoded import MANIFEST_FILE, EncodedCube
from pipeline.codec.metrics import BandQuality, bpppb
from pipeline.confine import confined, safe_name
from pipeline.errors import CubecastError
from pipeline.lock import holds_output_folder

# crs_string and footprint (taco.geo), SAMPLE_META, StagedSample and child_id (taco.staged)
# are imported from here too
from pipeline.taco.geo import _crs_of, crs_string, extent_of, footprint  # noqa: F401
from pipeline.taco.staged import SAMPLE_META, StagedSample, child_id  # noqa: F401
from pipeline.taco.ziptimes import fix_zip_times


@dataclass(frozen=True)
class DatasetInfo:
    """Dataset-level TACO metadata (from a recipe)."""

    id: str
    version: str = "0.1.0"
    title: str | None = None
    description: str = "Earth-observation cubes encoded as video streams with cubecast."
    licenses: tuple[str, ...] = ("cc-by-4.0",)
    providers: tuple[str, ...] = ("cubecast",)
    tasks: tuple[str, ...] = ("semantic-segmentation",)
    keywords: tuple[str, ...] = ("earth-observation", "datacube", "video-compression")


@dataclass
class CubeSample:
    """An encoded cube with the measurements that become its metadata row."""

    encoded: EncodedCube
    quality: list[BandQuality]
    raw_bytes: int
    split: str | None = None
    footprint: tuple[float, float, float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.encoded.manifest.cube_id

    def metadata(self) -> dict[str, Any]:
        m = self.encoded.manifest
        coords = m.coords.get(m.time_dim)
        times = np.atleast_1d(jsonvalues.from_json(coords.values)) if coords else None
        tvals = [str(t) for t in times[[0, -1]]] if times is not None and times.size else None
        lossy = [q.psnr for q in self.quality if q.role == "continuous"]
        w, s, e, n = self.footprint or (np.nan,) * 4
        streams = {
            s.name: {
                "codec": s.codec,
                "crf": s.crf,
                "lossless": s.lossless,
                "preset": s.preset,
                "pix_fmt": s.pix_fmt,
                "bands": s.planes,
                # what wrote the stream, as the manifest records it
                "engine": getattr(s, "engine", None) or getattr(s, "backend", None),
            }
            for s in m.streams
        }
        h, wd = m.frame_shape
        return {
            "time_start": str(tvals[0]) if tvals else "",
            "time_end": str(tvals[-1]) if tvals else "",
            "bbox_west": float(w),
            "bbox_south": float(s),
            "bbox_east": float(e),
            "bbox_north": float(n),
            "crs": _crs_of(m),
            "shape": f"{m.n_frames}x{h}x{wd}",
            "n_bands": len(m.channels),
            "variables": ",".join(m.data_vars_order),
            "codec": json.dumps(streams),
            "psnr_min": float(min(lossy)) if lossy else float("inf"),
            "psnr_bands": json.dumps(
                {q.channel: round(q.psnr, 3) for q in self.quality if q.role == "continuous"}
            ),
            "categorical_exact": all(q.exact for q in self.quality if q.role == "categorical"),
            "bpppb": bpppb(self.encoded),
            "ratio": self.raw_bytes / self.encoded.nbytes,
            "raw_bytes": int(self.raw_bytes),
            "encoded_bytes": int(self.encoded.nbytes),
            # the stored manifest's SHA-256: readers check the manifest child against it
            "manifest_sha256": hashlib.sha256(m.to_bytes()).hexdigest(),
            "split": self.split or "",
            **self.extra,
        }


def stage_sample(
    sample: CubeSample, root: str | Path, marks: dict[str, str] | None = None
) -> StagedSample:
    """Write ``root/<id>/`` (streams, manifest, ``sample.json`` and the hidden ``marks``
    files, e.g. the encode cache's record) atomically."""
    root = Path(root)
    dest = confined(root, safe_name(sample.id, "cube id"), "cube id")
    tmp = root / f".{sample.id}.part"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        sample.encoded.to_folder(tmp)
        (tmp / SAMPLE_META).write_text(json.dumps(sample.metadata(), indent=1, default=str))
        for name, text in (marks or {}).items():  # hidden names: not packed
            (tmp / ("." + safe_name(name.removeprefix("."), "mark file"))).write_text(text)
    except OSError as exc:  # a full disk: no half-staged cube left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise CubecastError(
            f"{root}: cannot stage cube {sample.id!r} ({exc.strerror or exc})"
        ) from None
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return StagedSample(dest)


def _taco_sample(sample: CubeSample | StagedSample) -> Any:
    from tacotoolbox.sample.datamodel import Sample
    from tacotoolbox.tortilla.datamodel import Tortilla

    if isinstance(sample, StagedSample):
        kids = [Sample(id=child_id(p.name), path=p) for p in sample.files()]
    else:
        files = sample.encoded.files()
        names = [MANIFEST_FILE] + sample.encoded.filenames()
        kids = [Sample(id=child_id(n), path=files[n]) for n in names]
    s = Sample(id=sample.id, path=Tortilla(samples=kids))
    s.extend_with(sample.metadata())
    return s


def sample_nbytes(sample: CubeSample | StagedSample) -> int:
    if isinstance(sample, StagedSample):
        return sum(f.stat().st_size for f in sample.files())
    return int(sample.encoded.nbytes)


def _chunks(samples: list[Any], max_bytes: int) -> list[list[Any]]:
    """Consecutive runs of samples whose sizes add up to at most ``max_bytes`` (at least one)."""
    chunks: list[list[Any]] = [[]]
    size = 0
    for s in samples:
        n = sample_nbytes(s)
        if chunks[-1] and size + n > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(s)
        size += n
    return chunks


def shard_names(
    dataset_id: str, splits: list[str], n_parts: dict[str, int]
) -> dict[str, list[str]]:
    """File names per split: ``<id>.tacozip`` for one split in one file, ``<id>_<split>``
    when the samples carry several splits, ``_partNNNN`` when a split needs several files."""
    names = {}
    for split in splits:
        base = dataset_id if len(splits) == 1 else f"{dataset_id}_{split or 'nosplit'}"
        n = n_parts[split]
        names[split] = (
            [f"{base}.tacozip"] if n == 1 else [f"{base}_part{i:04d}.tacozip" for i in range(n)]
        )
    return names


def split_bytes(split_size: str) -> int:
    """``"4GB"`` -> bytes, as tacotoolbox reads a split size."""
    from tacotoolbox._validation import validate_split_size

    try:
        return int(validate_split_size(split_size))
    except Exception as exc:  # tacotoolbox's own error type; the user needs the value
        raise CubecastError(f"split size {split_size!r}: {exc}") from None


def split_groups(
    samples: list[Any], rows: dict[str, dict[str, Any]], max_bytes: int
) -> dict[str, list[list[Any]]]:
    """Samples by split (in the order the splits first appear), each split in runs of at
    most ``max_bytes``: one shard per run."""
    groups: dict[str, list[Any]] = {}
    for s in samples:
        groups.setdefault(str(rows[s.id].get("split") or ""), []).append(s)
    return {split: _chunks(members, max_bytes) for split, members in groups.items()}


def write_shard(
    members: list[CubeSample | StagedSample],
    path: Path,
    info: DatasetInfo,
    rows: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """One ``.tacozip`` at ``path`` holding ``members``, with the real extent of their
    samples and fixed ZIP times (the same samples give the same bytes)."""
    import tacotoolbox
    from tacotoolbox.datamodel import Taco
    from tacotoolbox.taco.datamodel import Extent, Provider
    from tacotoolbox.tortilla.datamodel import Tortilla

    rows = rows or {s.id: s.metadata() for s in members}
    tacotoolbox.verbose(False)
    taco = Taco(
        tortilla=Tortilla(samples=[_taco_sample(s) for s in members]),
        id=info.id,
        dataset_version=info.version,
        title=info.title,
        description=info.description,
        licenses=list(info.licenses),
        providers=[Provider(name=p) for p in info.providers],
        tasks=list(info.tasks),
        keywords=list(info.keywords),
    )
    spatial, temporal = extent_of(rows[s.id] for s in members)
    taco.extent = Extent(spatial=spatial, temporal=temporal)
    made = tacotoolbox.create(taco, path, split_size=None, consolidate=False)
    if len(made) != 1:
        raise CubecastError(f"{path}: tacotoolbox wrote {len(made)} files for one shard")
    fix_zip_times(made[0])
    return Path(made[0])


def check_unique(samples: list[Any]) -> None:
    ids = [s.id for s in samples]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise CubecastError(f"duplicate sample ids: {', '.join(sorted(dupes))}")


@holds_output_folder  # one writer per folder; stale temporary folders cleared
def pack_shards(
    samples: Iterable[CubeSample | StagedSample],
    out: Path,
    info: DatasetInfo,
    split_size: str = "4GB",
) -> list[Path]:
    """Write one set of shards per split plus ``out/.tacocat/`` over all of them, atomically.

    Samples are grouped by their ``split`` so a hub config can list real splits; a split
    larger than ``split_size`` becomes ``_partNNNN`` files. Each shard's TACO collection
    carries the real extent of its samples, and ``.tacocat/`` (written even for one shard,
    so ``tacoreader.load("OUT/.tacocat")`` always works) merges them. Everything is written
    into a temporary sibling folder and moved into ``out`` only when complete; shards of an
    earlier pack (any dataset id or settings) are replaced, so ``out`` never holds a mix.
    """
    import tacotoolbox

    samples = list(samples)
    if not samples:
        raise CubecastError(f"nothing to pack into {out}: no samples")
    check_unique(samples)
    max_bytes = split_bytes(split_size)
    rows = {s.id: s.metadata() for s in samples}
    chunks = split_groups(samples, rows, max_bytes)
    names = shard_names(info.id, list(chunks), {k: len(v) for k, v in chunks.items()})

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pack-", dir=out))
    try:
        try:
            created = [
                write_shard(members, tmp / name, info, rows)
                for split, parts in chunks.items()
                for members, name in zip(parts, names[split], strict=True)
            ]
            tacotoolbox.create_tacocat(created, output=tmp)
        except CubecastError:
            raise
        except Exception as exc:  # a full disk (tacotoolbox wraps libzip's error), a quota,
            # samples TACO refuses: one line, and the old shards stay as they were
            raise CubecastError(f"{out}: cannot write shards ({_cause(exc, out)})") from None
        for stale in out.glob("*.tacozip"):  # any earlier pack, whatever its id: no mix
            stale.unlink()
        shutil.rmtree(out / ".tacocat", ignore_errors=True)
        for item in sorted(tmp.iterdir()):
            dest = out / item.name
            if dest.exists():
                shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
            item.rename(dest)
        return [out / p.name for p in created]  # splits in the order the samples came
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cause(exc: BaseException, out: Path) -> str:
    """One line for why shards could not be written, with the disk's free space when the
    disk is what ran out."""
    text = " ".join(str(exc).split())[:300]
    free = shutil.disk_usage(out).free
    tiny = "; the disk is full" if free < (1 << 20) else ""
    return f"{type(exc).__name__}: {text}{tiny}; {free:,} bytes free; nothing in it was replaced"


def encode_sample(
    ds: xr.Dataset,
    options: Any = None,
    cube_id: str | None = None,
    split: str | None = None,
    roles: dict[str, str] | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    workdir: str | Path | None = None,
    progress: bool = False,
) -> CubeSample:
    """Encode a cube and measure it against its source: the unit of work before packing."""
    from pipeline.codec.encode import encode_cube
    from pipeline.codec.metrics import compare_encoded, raw_nbytes

    enc = encode_cube(ds, options, cube_id=cube_id, roles=roles, workdir=workdir, progress=progress)
    quality = compare_encoded(ds, enc, roles=roles)
    m = enc.manifest
    where = bbox if bbox is not None else footprint(ds, m.y_dim, m.x_dim)
    return CubeSample(enc, quality, raw_nbytes(ds), split, where)
