"""Packing encoded cubes into TACO shards (one FOLDER sample per cube, one child per file)."""

from __future__ import annotations

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


def child_id(filename: str) -> str:
    """TACO ids allow no dots: ``rgb.mkv`` -> ``rgb_mkv``."""
    return filename.replace(".", "_")


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
            "split": self.split or "",
            **self.extra,
        }


def _crs_of(m: Any) -> str:
    ref = m.coords.get("spatial_ref")
    if ref is None:
        return ""
    wkt = ref.attrs.get("crs_wkt") or ref.attrs.get("spatial_ref") or ""
    try:
        from pyproj import CRS

        epsg = CRS.from_wkt(wkt).to_epsg()
        return f"EPSG:{epsg}" if epsg else wkt
    except Exception:  # an unparsable WKT is kept verbatim rather than lost
        return wkt


def crs_string(ds: xr.Dataset) -> str:
    """``EPSG:<code>`` when the rioxarray CRS has one, else its WKT, else ''."""
    import rioxarray  # noqa: F401  (registers .rio)

    try:
        crs = ds.rio.crs
    except Exception:  # a malformed grid mapping means: no CRS we can state
        return ""
    if crs is None:
        return ""
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def footprint(
    ds: xr.Dataset, y_dim: str = "y", x_dim: str = "x"
) -> tuple[float, float, float, float] | None:
    """Bounding box in EPSG:4326 from the x/y coords and the rioxarray CRS."""
    import rioxarray  # noqa: F401  (registers .rio)

    try:
        crs = ds.rio.crs
    except Exception:  # no rioxarray CRS: no footprint
        return None
    if crs is None or x_dim not in ds.coords or y_dim not in ds.coords:
        return None
    from pyproj import Transformer

    x, y = ds[x_dim].values, ds[y_dim].values
    xs = np.array([x.min(), x.max(), x.max(), x.min()])
    ys = np.array([y.min(), y.min(), y.max(), y.max()])
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xs, ys)
    return float(min(lon)), float(min(lat)), float(max(lon)), float(max(lat))


SAMPLE_META = "sample.json"


@dataclass(frozen=True)
class StagedSample:
    """An encoded cube written to disk with its metadata row, ready to pack.

    Staging keeps memory flat (a shard is packed from files, not from bytes held in RAM)
    and lets separate processes or Dask workers hand samples to the packer by path.
    """

    folder: Path

    @property
    def id(self) -> str:
        return self.folder.name

    def metadata(self) -> dict[str, Any]:
        return json.loads((self.folder / SAMPLE_META).read_text())

    def files(self) -> list[Path]:
        skip = (MANIFEST_FILE, SAMPLE_META)
        rest = sorted(
            p for p in self.folder.iterdir() if p.name not in skip and not p.name.startswith(".")
        )
        return [self.folder / MANIFEST_FILE, *rest]


def stage_sample(sample: CubeSample, root: str | Path) -> StagedSample:
    """Write ``root/<id>/`` (streams, manifest, ``sample.json``) atomically."""
    root = Path(root)
    dest = confined(root, safe_name(sample.id, "cube id"), "cube id")
    tmp = root / f".{sample.id}.part"
    shutil.rmtree(tmp, ignore_errors=True)
    sample.encoded.to_folder(tmp)
    (tmp / SAMPLE_META).write_text(json.dumps(sample.metadata(), indent=1, default=str))
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


def extent_of(rows: Iterable[dict[str, Any]]) -> tuple[list[float], list[str] | None]:
    """Union of the samples' EPSG:4326 bboxes and time ranges (TACO ``extent``).

    tacotoolbox derives an extent only from STAC columns and otherwise states the whole
    globe with no time range, which says nothing; cubecast's rows carry bbox_* and
    time_start/time_end, so the real extent is computed here.
    """
    rows = list(rows)
    boxes = [
        [float(r[k]) for k in ("bbox_west", "bbox_south", "bbox_east", "bbox_north")]
        for r in rows
        if all(np.isfinite(float(r.get(k, np.nan))) for k in ("bbox_west", "bbox_south"))
        and all(np.isfinite(float(r.get(k, np.nan))) for k in ("bbox_east", "bbox_north"))
    ]
    if boxes:
        arr = np.array(boxes)
        spatial = [
            max(float(arr[:, 0].min()), -180.0),
            max(float(arr[:, 1].min()), -90.0),
            min(float(arr[:, 2].max()), 180.0),
            min(float(arr[:, 3].max()), 90.0),
        ]
    else:
        spatial = [-180.0, -90.0, 180.0, 90.0]
    starts = [np.datetime64(r["time_start"], "s") for r in rows if r.get("time_start")]
    ends = [np.datetime64(r["time_end"], "s") for r in rows if r.get("time_end")]
    temporal = [f"{min(starts)}Z", f"{max(ends)}Z"] if starts and ends else None
    return spatial, temporal


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
    from tacotoolbox._validation import validate_split_size
    from tacotoolbox.datamodel import Taco
    from tacotoolbox.taco.datamodel import Extent, Provider
    from tacotoolbox.tortilla.datamodel import Tortilla

    samples = list(samples)
    if not samples:
        raise CubecastError(f"nothing to pack into {out}: no samples")
    ids = [s.id for s in samples]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise CubecastError(f"duplicate sample ids: {', '.join(sorted(dupes))}")
    try:
        max_bytes = validate_split_size(split_size)
    except Exception as exc:  # tacotoolbox's own error type; the user needs the value
        raise CubecastError(f"split size {split_size!r}: {exc}") from None
    rows = {s.id: s.metadata() for s in samples}
    groups: dict[str, list[Any]] = {}
    for s in samples:
        groups.setdefault(str(rows[s.id].get("split") or ""), []).append(s)
    chunks = {split: _chunks(members, max_bytes) for split, members in groups.items()}
    names = shard_names(info.id, list(groups), {k: len(v) for k, v in chunks.items()})

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pack-", dir=out))
    try:
        tacotoolbox.verbose(False)
        created = []
        for split, parts in chunks.items():
            for members, name in zip(parts, names[split], strict=True):
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
                made = tacotoolbox.create(taco, tmp / name, split_size=None, consolidate=False)
                for shard in made:
                    fix_zip_times(shard)
                created += made
        tacotoolbox.create_tacocat(created, output=tmp)
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


ZIP_EPOCH = (0, (1 << 5) | 1)  # DOS time 00:00:00, date 1980-01-01: the format's first day


def fix_zip_times(path: str | Path) -> None:
    """Set every entry's modification time to 1980-01-01 in place, in the local headers
    and the central directory: tacotoolbox stamps the time of writing, which made every
    re-pack of the same samples a different file (and a full re-upload). Sizes and
    offsets are unchanged, so TACO's own offset index stays right."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        central = zf.start_dir
    stamp = struct.pack("<HH", *ZIP_EPOCH)
    with open(path, "r+b") as f:
        for info in infos:
            f.seek(info.header_offset)
            if f.read(4) != b"PK\x03\x04":
                raise CubecastError(f"{path}: unexpected ZIP layout at {info.filename}")
            f.seek(info.header_offset + 10)
            f.write(stamp)
        pos = central
        for _ in infos:
            f.seek(pos)
            head = f.read(46)
            if head[:4] != b"PK\x01\x02":
                raise CubecastError(f"{path}: unexpected ZIP central directory")
            f.seek(pos + 12)
            f.write(stamp)
            n, m, k = struct.unpack("<HHH", head[28:34])
            pos += 46 + n + m + k


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
