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

from pipeline.encoded import MANIFEST_FILE, EncodedCube
from pipeline.errors import CubecastError
from pipeline.metrics import BandQuality, bpppb


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
        times = coords.values if coords else None
        tvals = times.get("__np__") if isinstance(times, dict) else None
        lossy = [q.psnr for q in self.quality if q.role == "continuous"]
        w, s, e, n = self.footprint or (np.nan,) * 4
        streams = {
            s.name: {"codec": s.codec, "crf": s.crf, "pix_fmt": s.pix_fmt, "bands": s.planes}
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
    dest = root / sample.id
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


def pack_shards(
    samples: Iterable[CubeSample | StagedSample],
    out: Path,
    info: DatasetInfo,
    split_size: str = "4GB",
) -> list[Path]:
    """Write ``out/<id>.tacozip`` (or ``<id>_partNNNN.tacozip`` + ``.tacocat``) atomically.

    Everything is written into a temporary sibling folder first and moved into ``out`` only
    when tacotoolbox has finished, so an error leaves no partial shard behind.
    """
    import tacotoolbox
    from tacotoolbox.datamodel import Taco
    from tacotoolbox.taco.datamodel import Provider
    from tacotoolbox.tortilla.datamodel import Tortilla

    taco_samples = [_taco_sample(s) for s in samples]
    if not taco_samples:
        raise CubecastError(f"nothing to pack into {out}: no samples")
    ids = [s.id for s in taco_samples]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise CubecastError(f"duplicate sample ids: {', '.join(sorted(dupes))}")
    taco = Taco(
        tortilla=Tortilla(samples=taco_samples),
        id=info.id,
        dataset_version=info.version,
        title=info.title,
        description=info.description,
        licenses=list(info.licenses),
        providers=[Provider(name=p) for p in info.providers],
        tasks=list(info.tasks),
        keywords=list(info.keywords),
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pack-", dir=out))
    try:
        tacotoolbox.verbose(False)
        created = tacotoolbox.create(taco, tmp / f"{info.id}.tacozip", split_size=split_size)
        final = []
        for stale in [*out.glob(f"{info.id}.tacozip"), *out.glob(f"{info.id}_part*.tacozip")]:
            stale.unlink()
        shutil.rmtree(out / ".tacocat", ignore_errors=True)
        for item in sorted(tmp.iterdir()):
            dest = out / item.name
            if dest.exists():
                shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
            item.rename(dest)
            if item in created or item.suffix == ".tacozip":
                final.append(dest)
        return sorted(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def encode_sample(
    ds: xr.Dataset,
    options: Any = None,
    cube_id: str | None = None,
    split: str | None = None,
    roles: dict[str, str] | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    workdir: str | Path | None = None,
) -> CubeSample:
    """Encode a cube and measure it against its source: the unit of work before packing."""
    from pipeline.codec import encode_cube
    from pipeline.metrics import compare_encoded, raw_nbytes

    enc = encode_cube(ds, options, cube_id=cube_id, roles=roles, workdir=workdir)
    quality = compare_encoded(ds, enc, roles=roles)
    m = enc.manifest
    where = bbox if bbox is not None else footprint(ds, m.y_dim, m.x_dim)
    return CubeSample(enc, quality, raw_nbytes(ds), split, where)
