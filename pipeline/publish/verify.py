"""Verification: decode every sample from the shards as written and hold it to the recipe.

The in-memory encoded cube is not trusted: what is checked is what a downstream user will
read. PSNR is recomputed per band over valid pixels against the source cube, masks and
class layers must be bit-exact, and the verdict lists every failure by sample and band.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import xarray as xr
from tqdm.auto import tqdm

from pipeline.codec.encoded import file_sha256
from pipeline.codec.manifest import Manifest
from pipeline.codec.metrics import BandQuality, compare_encoded
from pipeline.codec.readcost import access_fields
from pipeline.errors import UnsafePathError, VerificationError
from pipeline.taco.read import _open_archive, _shards_of, sample_encoded, sample_ids

REPORT_JSON = "verification.json"


def dataset_files(folder: str | os.PathLike[str]) -> list[str]:
    """Every file of a dataset folder that is published (relative POSIX paths, sorted).

    Hidden work files (``.work/``, spools, locks) and ``*.part`` files stay behind; the
    ``.tacocat`` index is published. A symbolic link is refused rather than followed: it
    would publish whatever it points to, which nobody verified.
    """
    root = Path(folder)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        keep = []
        for name in sorted(dirnames):
            if name.startswith(".") and not (name == ".tacocat" and rel_dir == "."):
                continue
            if (here / name).is_symlink():
                raise UnsafePathError(
                    f"{here / name}: is a symbolic link; cubecast does not publish links "
                    "(copy what it points to into the folder)"
                )
            keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            if name.startswith(".") or name.endswith(".part"):
                continue
            path = here / name
            if path.is_symlink():
                raise UnsafePathError(
                    f"{path}: is a symbolic link; cubecast does not publish links "
                    "(copy what it points to into the folder)"
                )
            out.append(path.relative_to(root).as_posix())
    return sorted(out)


@dataclass(frozen=True)
class BandCheck:
    sample: str
    band: str
    role: str
    psnr: float
    required: float | None
    exact: bool
    passed: bool
    # error-bounded bands (``--max-error``): the manifest's bound, and the largest absolute
    # error measured on the decoded sample (valid values)
    max_error: float | None = None
    max_abs_error: float | None = None

    @property
    def bound_broken(self) -> bool:
        return self.max_error is not None and not _within(self.max_abs_error, self.max_error)

    def failure(self) -> str:
        if self.bound_broken:
            return (
                f"sample {self.sample!r} band {self.band!r}: max abs error "
                f"{self.max_abs_error:.6g} > its bound {self.max_error:.6g} (max_error)"
            )
        if self.role == "categorical":
            return f"sample {self.sample!r} band {self.band!r}: class layer is not bit-exact"
        if not self.exact and self.required is None:
            return f"sample {self.sample!r} band {self.band!r}: validity mask differs"
        return (
            f"sample {self.sample!r} band {self.band!r}: PSNR {self.psnr:.2f} dB < "
            f"{self.required:.2f} dB required"
        )


@dataclass
class Verification:
    checks: list[BandCheck] = field(default_factory=list)
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)  # metadata rows
    shards: dict[str, str] = field(default_factory=dict)  # shard file name -> sha256
    # every published file but this record itself -> sha256: publish mirrors exactly these
    files: dict[str, str] = field(default_factory=dict)
    # how many of the shards hold each sample: 1 each in a whole dataset
    copies: Counter[str] = field(default_factory=Counter)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def failures(self) -> list[str]:
        return [c.failure() for c in self.checks if not c.passed]

    def summary(self) -> str:
        n = len(self.samples)
        if self.passed:
            return f"PASS: {n} samples, {len(self.checks)} band checks"
        fails = self.failures()
        head = "; ".join(fails[:5]) + (f"; and {len(fails) - 5} more" if len(fails) > 5 else "")
        return f"FAIL: {len(fails)} of {len(self.checks)} band checks in {n} samples: {head}"

    def raise_for_failures(self) -> None:
        if not self.passed:
            raise VerificationError(self.summary())

    def quality_rows(self) -> list[dict[str, Any]]:
        """One row per cube: split, min PSNR, bpppb, ratio, verdict (artifacts, summaries)."""
        rows = []
        for sid, meta in self.samples.items():
            checks = [c for c in self.checks if c.sample == sid]
            lossy = [c.psnr for c in checks if c.role == "continuous"]
            rows.append(
                {
                    "cube": sid,
                    "split": meta.get("split") or "",
                    "min_psnr_db": round(min(lossy), 2) if lossy else None,
                    "bpppb": round(float(meta.get("bpppb") or 0), 4),
                    "ratio": round(float(meta.get("ratio") or 0), 1),
                    "passed": all(c.passed for c in checks),
                }
            )
        return rows

    def to_json(self) -> str:
        def clean(v: float) -> float | str:
            return v if math.isfinite(v) else str(v)

        rows = [
            {
                **{k: v for k, v in asdict(c).items() if v is not None or "max_" not in k},
                "psnr": clean(c.psnr),
            }
            for c in self.checks
        ]
        return json.dumps(
            {
                "passed": self.passed,
                "checks": rows,
                "samples": self.samples,
                "shards": self.shards,
                "files": self.files,
            },
            indent=1,
            default=str,
        )

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / REPORT_JSON
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return path

    def record_files(self, folder: str | Path, digest: Callable[[Path], str] = file_sha256) -> None:
        """Hash every file the folder will publish (shards, index, report, card)."""
        self.files = {
            rel: digest(Path(folder) / rel) for rel in dataset_files(folder) if rel != REPORT_JSON
        }

    @classmethod
    def read(cls, folder: str | Path) -> Verification:
        path = Path(folder) / REPORT_JSON
        try:
            data = json.loads(path.read_text())
            checks = [BandCheck(**{**c, "psnr": float(c["psnr"])}) for c in data["checks"]]
            result = cls(checks, dict(data["samples"]), dict(data.get("shards", {})))
            result.files = {str(k): str(v) for k, v in dict(data.get("files", {})).items()}
        except OSError as exc:
            raise VerificationError(f"{path}: cannot read ({exc.strerror or exc})") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise VerificationError(
                f"{path}: not a cubecast verification record ({exc.__class__.__name__}: "
                f"{str(exc)[:120]}); run `cubecast verify` again"
            ) from None
        return result


# float32 rounding of |x - x'| when measured (the encoder keeps a 1e-4 margin below E)
BOUND_TOLERANCE = 1e-6


def _within(err: float | None, bound: float) -> bool:
    return err is not None and err <= bound * (1 + BOUND_TOLERANCE)


def max_error_bounds(manifest: Manifest) -> dict[str, float]:
    """Each error-bounded band's bound as its manifest records it."""
    return {c.name: c.max_error for c in manifest.channels if c.max_error is not None}


def check_bands(
    sample: str,
    quality: Sequence[BandQuality],
    threshold: Callable[[str], float],
    bounds: Mapping[str, float] | None = None,
) -> list[BandCheck]:
    """PSNR against the recipe's threshold per band, class layers bit-exact, and, for an
    error-bounded band (``bounds``: the manifest's), every valid value within its bound."""
    out = []
    bounds = bounds or {}
    for q in quality:
        if q.role == "categorical":
            out.append(BandCheck(sample, q.channel, q.role, q.psnr, None, q.exact, q.exact))
            continue
        need = threshold(q.channel)
        ok = q.psnr >= need
        bound = bounds.get(q.channel)
        if bound is not None:
            ok &= _within(q.max_abs_error, bound)
            err = q.max_abs_error
            out.append(BandCheck(sample, q.channel, q.role, q.psnr, need, q.exact, ok, bound, err))
            continue
        out.append(BandCheck(sample, q.channel, q.role, q.psnr, need, q.exact, ok))
    return out


def _metadata_rows(shard: str) -> dict[str, dict[str, Any]]:
    """Sample metadata rows as tacoreader reads them (none for shards it cannot open)."""
    import tacoreader

    try:
        table = tacoreader.load(shard).data.to_arrow()
    except Exception:  # e.g. plain-http shards, which tacoreader's object store refuses
        return {}
    return {
        row["id"]: {k: v for k, v in row.items() if not k.startswith("internal:")}
        for row in table.to_pylist()
    }


def verify_shards(
    shards: Any,
    load_source: Callable[[str], xr.Dataset],
    threshold: Callable[[str], float],
    roles: dict[str, str] | None = None,
    window: int = 64,
    progress: bool = True,
) -> Verification:
    """Decode each sample of ``shards`` and compare it with ``load_source(sample_id)``."""
    result = Verification()
    paths = _shards_of(shards)
    for shard in paths:
        rows = _metadata_rows(shard)
        if Path(shard).is_file():
            result.shards[Path(shard).name] = file_sha256(Path(shard))
        archive, fh = _open_archive(shard)
        with archive, fh:
            for sid in tqdm(
                sample_ids(archive), desc=f"verify {Path(shard).name}", disable=not progress
            ):
                result.copies[sid] += 1
                enc = sample_encoded(archive, sid, shard)
                manifest = enc.manifest
                source = load_source(sid)
                n = source.sizes[manifest.time_dim]
                if n != manifest.n_frames:
                    raise VerificationError(
                        f"{shard}: sample {sid!r} has {manifest.n_frames} frames, "
                        f"its source has {n}"
                    )
                quality = compare_encoded(source, enc, roles=roles, window=window)
                result.checks += check_bands(sid, quality, threshold, max_error_bounds(manifest))
                # what reading part of it costs (the recipe's ``access`` trade), for the card
                result.samples[sid] = {**rows.get(sid, {"id": sid}), **access_fields(enc)}
    if not result.samples:
        raise VerificationError(f"{shards}: no samples to verify")
    return result
