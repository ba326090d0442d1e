"""Downstream task: land-cover classification on original and decoded cubes (issue 25).

The paper's claim: a classifier sees no difference between a cube and its decoded copy at
the recipe's default quality. Checked here on a synthetic DynamicEarthNet twin:

1. write a small twin (``pipeline.sources.twins.write_dynamicearthnet``: daily 4-band
   PlanetScope-like GeoTIFFs and monthly 7-class one-hot labels) and load each area through
   the real source adapter (``pipeline.sources.load_cube``);
2. encode each cube exactly as ``cubecast pack dynamicearthnet`` does
   (``encode_sample`` with ``recipe.encode_options()`` and ``recipe.roles()``: the recipe's
   PSNR target, codec "auto", preset, keyint, groups, KLT and hedge) and decode it back;
3. per pixel and labelled month, features = the month's median of each band and the NDVI
   of those medians, computed the same way from the original and the decoded frames;
4. leave-one-area-out: a random forest (fixed seed) is trained on a random subsample of the
   other areas' pixels and tested on every pixel of the held-out area. Three evaluations:
   train original / test original, train original / test decoded, train decoded / test
   decoded; predictions are pooled over the folds before scoring (overall accuracy, macro F1
   over the classes present).

Acceptance (issue 25): accuracy(original) - accuracy(decoded) <= 0.1 percentage points.
Diagnostics come with the numbers: per-class F1, per-month accuracy, accuracy at class
boundaries vs patch interiors, how many predictions flip, and the feature error per band
against the features' within-class spread.

    python bench/downstream.py                 # 4 areas x 120 days x 256 x 256 px
    python bench/downstream.py --quick         # 2 areas x 35 days x 48 x 48 px (seconds)

Prints a table; writes bench/results/downstream.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPE = "dynamicearthnet"
BANDS = ("blue", "green", "red", "nir")
FEATURES = (*(f"{b}_median" for b in BANDS), "ndvi")
TARGET_PP = 0.1
BOUNDARY_PX = 2  # a pixel within this many px (Chebyshev) of another class is "boundary"
EVALS = {
    "orig_orig": "train original, test original",
    "orig_dec": "train original, test decoded",
    "dec_dec": "train decoded, test decoded",
}


@dataclass
class Area:
    """One cube's per-pixel features (months, H*W, features) and labels (months, H*W)."""

    id: str
    months: list[str]
    orig: np.ndarray
    dec: np.ndarray
    labels: np.ndarray
    boundary: np.ndarray  # (months, H*W) bool
    info: dict


# --- cubes -----------------------------------------------------------------------------------
def recipe_for(location: Path, cubes: int):
    """The shipped recipe on the twin, selecting every area written (codec settings as
    shipped: only the source location and the cube count differ)."""
    from pipeline.recipe import load_recipe
    from pipeline.recipe_tables import CubeSelection

    recipe = load_recipe(RECIPE, location=str(location))
    source = recipe.source.model_copy(update={"cubes": CubeSelection(count=cubes)})
    return recipe.model_copy(update={"source": source})


def monthly_features(ds, label_times) -> np.ndarray:
    """(months, H*W, features) float32: each band's median over the month's days, and the
    NDVI of the medians."""
    import pandas as pd

    times = pd.DatetimeIndex(ds["time"].values)
    out = []
    for lt in pd.DatetimeIndex(label_times):
        days = np.flatnonzero((times.year == lt.year) & (times.month == lt.month))
        if days.size == 0:
            raise ValueError(f"no imagery in the labelled month {lt:%Y-%m}")
        med = [np.median(ds[b].values[days].astype(np.float32), axis=0) for b in BANDS]
        red, nir = med[BANDS.index("red")], med[BANDS.index("nir")]
        ndvi = (nir - red) / np.maximum(nir + red, 1.0)
        out.append(np.stack([*med, ndvi], axis=-1).reshape(-1, len(FEATURES)))
    return np.stack(out).astype(np.float32)


def boundary_mask(labels: np.ndarray) -> np.ndarray:
    """Pixels with another class within BOUNDARY_PX, per month: where the codec's spatial
    smoothing would show first."""
    from scipy.ndimage import maximum_filter, minimum_filter

    size = 2 * BOUNDARY_PX + 1
    return np.stack([maximum_filter(m, size=size) != minimum_filter(m, size=size) for m in labels])


def encode_area(recipe, cube_id: str) -> Area:
    """Load one area through the source adapter, encode it as ``cubecast pack`` does, decode
    it, and build both feature sets."""
    from pipeline.codec.decode import decode_cube
    from pipeline.codec.metrics import psnr
    from pipeline.sources import load_cube
    from pipeline.taco.pack import encode_sample

    cube = load_cube(recipe, cube_id)
    t0 = time.perf_counter()  # the lazily read cube, as `cubecast pack` encodes it
    sample = encode_sample(
        cube.dataset, recipe.encode_options(), cube_id=cube_id, roles=recipe.roles()
    )
    encode_s = time.perf_counter() - t0
    ds = cube.dataset.load()
    enc = sample.encoded
    t0 = time.perf_counter()
    dec = decode_cube(enc)
    decode_s = time.perf_counter() - t0
    m = enc.manifest
    n_t, h, w = ds.sizes["time"], ds.sizes["y"], ds.sizes["x"]
    band_px = n_t * h * w
    # per band over all pixels (the twin has no nodata), range = max - min of the original
    psnr_band = {b: float(psnr(ds[b].values, dec[b].values)) for b in BANDS}
    streams = [s for s in m.streams if s.kind == "continuous"]  # the bands (or their KLT)
    stream_bytes = sum(s.nbytes for s in streams)
    labels = ds["label"].values.reshape(ds.sizes["label_time"], -1)
    label_exact = bool(np.array_equal(dec["label"].values, ds["label"].values))
    info = {
        "id": cube_id,
        "split": cube.split,
        "frames": n_t,
        "height": h,
        "width": w,
        "labelled_months": ds.sizes["label_time"],
        "raw_bytes": int(sample.raw_bytes),
        "encoded_bytes": int(enc.nbytes),
        "band_stream_bytes": int(stream_bytes),
        "compression_ratio": sample.raw_bytes / enc.nbytes,
        "bpppb": 8 * enc.nbytes / (band_px * len(BANDS)),
        "bpppb_streams": 8 * stream_bytes / (band_px * len(BANDS)),
        "psnr_per_band": psnr_band,
        "psnr_min": min(psnr_band.values()),
        "psnr_pipeline": {q.channel: q.psnr for q in sample.quality if q.channel in BANDS},
        "streams": [
            {"name": s.name, "codec": s.codec, "crf": s.crf, "planes": s.planes, "bytes": s.nbytes}
            for s in streams
        ],
        "klt": [t.name for t in m.transforms],
        "labels_exact": label_exact,
        "encode_s": encode_s,
        "decode_s": decode_s,
    }
    times = ds["label_time"].values
    orig = monthly_features(ds, times)
    decf = monthly_features(dec, times)
    months = [str(np.datetime_as_string(t, unit="M")) for t in times]
    bnd = boundary_mask(ds["label"].values).reshape(len(months), -1)
    return Area(cube_id, months, orig, decf, labels, bnd, info)


# --- the classifier --------------------------------------------------------------------------
def make_model(seed: int, trees: int):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(
        n_estimators=trees, min_samples_leaf=2, n_jobs=2, random_state=seed
    )


def scores(y: np.ndarray, p: np.ndarray, classes: list[int]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    present = sorted(set(np.unique(y).tolist()))
    per_class = f1_score(y, p, labels=classes, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y, p)),
        "macro_f1": float(f1_score(y, p, labels=present, average="macro", zero_division=0)),
        "f1_per_class": {str(c): float(f) for c, f in zip(classes, per_class, strict=True)},
        "support_per_class": {str(c): int((y == c).sum()) for c in classes},
        "pixels": int(y.size),
    }


def sample_train(areas: list[Area], per_area_month: int, rng: np.random.Generator):
    """The same random pixels of each (area, month) for the original and decoded features."""
    xo, xd, y = [], [], []
    for a in areas:
        for m in range(len(a.months)):
            valid = np.flatnonzero(a.labels[m] != 255)
            idx = rng.choice(valid, size=min(per_area_month, valid.size), replace=False)
            xo.append(a.orig[m, idx])
            xd.append(a.dec[m, idx])
            y.append(a.labels[m, idx])
    return np.concatenate(xo), np.concatenate(xd), np.concatenate(y)


def classify(areas: list[Area], per_area_month: int, seed: int, trees: int) -> dict:
    """Leave-one-area-out; predictions of the three evaluations pooled over the folds."""
    pooled: dict[str, list[np.ndarray]] = {k: [] for k in (*EVALS, "y", "boundary", "month")}
    folds = []
    for k, test in enumerate(areas):
        train = [a for a in areas if a is not test]
        rng = np.random.default_rng(seed + k)
        xo, xd, y = sample_train(train, per_area_month, rng)
        t0 = time.perf_counter()
        m_orig = make_model(seed, trees).fit(xo, y)
        m_dec = make_model(seed, trees).fit(xd, y)
        fit_s = time.perf_counter() - t0
        valid = test.labels != 255
        to, td, ty = test.orig[valid], test.dec[valid], test.labels[valid]
        t0 = time.perf_counter()
        preds = {
            "orig_orig": m_orig.predict(to),
            "orig_dec": m_orig.predict(td),
            "dec_dec": m_dec.predict(td),
        }
        predict_s = time.perf_counter() - t0
        for name, p in preds.items():
            pooled[name].append(p)
        pooled["y"].append(ty)
        pooled["boundary"].append(test.boundary[valid])
        month_idx = np.broadcast_to(np.arange(len(test.months))[:, None], valid.shape)
        pooled["month"].append(month_idx[valid])
        fold = {"test_area": test.id, "train_pixels": int(y.size), "test_pixels": int(ty.size)}
        fold |= {n: float((p == ty).mean()) for n, p in preds.items()}
        fold |= {"fit_s": fit_s, "predict_s": predict_s}
        folds.append(fold)
    cat = {k: np.concatenate(v) for k, v in pooled.items()}
    return {"pooled": cat, "folds": folds}


# --- diagnostics -----------------------------------------------------------------------------
def diagnostics(areas: list[Area], cat: dict, classes: list[int]) -> dict:
    y, a, b = cat["y"], cat["orig_orig"], cat["orig_dec"]
    flip = a != b
    out: dict = {
        "flipped_predictions": int(flip.sum()),
        "flipped_fraction": float(flip.mean()),
        "flips_right_to_wrong": int((flip & (a == y)).sum()),
        "flips_wrong_to_right": int((flip & (b == y)).sum()),
        "flips_wrong_to_wrong": int((flip & (a != y) & (b != y)).sum()),
        "flips_by_true_class": {str(c): int((flip & (y == c)).sum()) for c in classes},
    }
    bnd = cat["boundary"]
    out["boundary_px"] = BOUNDARY_PX
    for where, sel in (("boundary", bnd), ("interior", ~bnd)):
        out[where] = {
            "pixels": int(sel.sum()),
            **{n: float((cat[n][sel] == y[sel]).mean()) if sel.any() else math.nan for n in EVALS},
            "flipped": int(flip[sel].sum()),
        }
    months = areas[0].months
    out["per_month"] = {}
    for m, month in enumerate(months):
        sel = cat["month"] == m
        out["per_month"][month] = {n: float((cat[n][sel] == y[sel]).mean()) for n in EVALS}
        out["per_month"][month]["flipped"] = int(flip[sel].sum())
    # feature error of the decoded cube against the features' natural spread per class
    orig = np.concatenate([x.orig.reshape(-1, len(FEATURES)) for x in areas])
    dec = np.concatenate([x.dec.reshape(-1, len(FEATURES)) for x in areas])
    lab = np.concatenate([x.labels.reshape(-1) for x in areas])
    err = dec - orig
    within = np.zeros(len(FEATURES))
    for c in classes:
        sel = lab == c
        if sel.sum() > 1:
            within += sel.sum() * orig[sel].var(axis=0)
    within = np.sqrt(within / max(int((lab != 255).sum()), 1))
    out["feature_error"] = {
        f: {
            "rmse": float(np.sqrt(np.mean(err[:, i] ** 2))),
            "max_abs": float(np.abs(err[:, i]).max()),
            "within_class_std": float(within[i]),
            "rmse_over_within_std": float(np.sqrt(np.mean(err[:, i] ** 2)) / within[i])
            if within[i] > 0
            else math.nan,
        }
        for i, f in enumerate(FEATURES)
    }
    return out


# --- the run ---------------------------------------------------------------------------------
def git_rev() -> str | None:
    """HEAD's short hash, "+dirty" when tracked files have uncommitted changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return None
    return (rev + ("+dirty" if dirty else "")) or None


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for p in ("cubecast", "scikit-learn", "numpy", "av", "imageio-ffmpeg"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def run(args, argv: list[str]) -> dict:
    import pandas as pd

    from pipeline.sources import cube_ids
    from pipeline.sources.dynamicearthnet import CLASSES
    from pipeline.sources.twins import write_dynamicearthnet

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        twin = args.twin or Path(tmp) / "dynamicearthnet"
        t0 = time.perf_counter()
        if not (twin / "SHA256SUMS").is_file():
            write_dynamicearthnet(
                twin,
                cubes=args.cubes,
                frames=args.days,
                size=args.size,
                seed=args.seed,
                progress=False,
            )
        twin_s = time.perf_counter() - t0
        recipe = recipe_for(twin, args.cubes)
        ids = cube_ids(recipe)
        areas = []
        for cid in ids:
            area = encode_area(recipe, cid)
            i = area.info
            if (len(ids), i["frames"], i["height"]) != (args.cubes, args.days, args.size):
                raise SystemExit(
                    f"{twin}: {len(ids)} areas of {i['frames']} days x {i['height']} px selected, "
                    f"not {args.cubes} x {args.days} x {args.size}: remove it or pick another"
                )
            print(
                f"{cid}: {i['frames']} days x {i['height']} x {i['width']}, "
                f"{i['bpppb']:.3f} bpppb, PSNR "
                + " ".join(f"{b} {v:.2f}" for b, v in i["psnr_per_band"].items())
                + f" dB, {'+'.join(s['codec'] for s in i['streams'])}, "
                f"encode {i['encode_s']:.1f} s",
                flush=True,
            )
            areas.append(area)
    if len(areas) < 2:
        raise SystemExit("need at least two areas for a leave-one-area-out split")
    if len({tuple(a.months) for a in areas}) != 1:
        raise SystemExit("areas with different labelled months")
    classes = sorted(set(np.concatenate([a.labels.ravel() for a in areas]).tolist()) - {255})
    t0 = time.perf_counter()
    res = classify(areas, args.train_pixels, args.seed, args.trees)
    classify_s = time.perf_counter() - t0
    cat = res["pooled"]
    results = {n: scores(cat["y"], cat[n], classes) for n in EVALS}
    base = results["orig_orig"]["accuracy"]
    # decoded minus original, in percentage points
    diff = {n: 100 * (results[n]["accuracy"] - base) for n in ("orig_dec", "dec_dec")}
    f1diff = {
        n: 100 * (results[n]["macro_f1"] - results["orig_orig"]["macro_f1"])
        for n in ("orig_dec", "dec_dec")
    }
    r = recipe.codec
    cubes = [a.info for a in areas]
    return {
        "bench": "downstream",
        "issue": 25,
        "command": " ".join(["python bench/downstream.py", *argv]),
        "date": pd.Timestamp.now().strftime("%Y-%m-%d"),
        "code": git_rev(),
        "versions": versions(),
        "settings": {
            "quick": args.quick,
            "areas": args.cubes,
            "days": args.days,
            "size": args.size,
            "twin_seed": args.seed,
            "model": "RandomForestClassifier",
            "model_params": {
                "n_estimators": args.trees,
                "min_samples_leaf": 2,
                "random_state": args.seed,
            },
            "sample_seed": args.seed,
            "train_pixels_per_area_month": args.train_pixels,
            "split": "leave-one-area-out, predictions pooled over the folds",
            "features": list(FEATURES),
            "classes": {str(c): CLASSES[c] for c in classes},
            "test_pixels": "every labelled pixel of the held-out area, every labelled month",
        },
        "recipe": {
            "name": recipe.name,
            "psnr": r.psnr,
            "verify_psnr_min": recipe.verify.psnr_min,
            "codec": r.codec,
            "preset": r.preset,
            "keyint": r.keyint,
            "decorrelate": r.decorrelate,
            "hedge": r.hedge,
            "groups": [{"name": g.name, "bands": g.bands} for g in r.groups],
        },
        "cubes": cubes,
        "summary_cubes": {
            "psnr_min": min(c["psnr_min"] for c in cubes),
            "psnr_mean": float(
                np.mean([np.mean(list(c["psnr_per_band"].values())) for c in cubes])
            ),
            "bpppb_mean": float(np.mean([c["bpppb"] for c in cubes])),
            "encoded_bytes": int(sum(c["encoded_bytes"] for c in cubes)),
            "raw_bytes": int(sum(c["raw_bytes"] for c in cubes)),
        },
        "results": results,
        "accuracy_difference_pp": diff,
        "macro_f1_difference_pp": f1diff,
        "acceptance": {
            "criterion": f"accuracy(original) - accuracy(decoded) <= {TARGET_PP} pp, "
            "for train-original/test-decoded and train-decoded/test-decoded",
            "target_pp": TARGET_PP,
            "met": bool(all(-d <= TARGET_PP for d in diff.values())),
        },
        "folds": res["folds"],
        "diagnostics": diagnostics(areas, cat, classes),
        "timing_s": {
            "twin": twin_s,
            "encode": sum(c["encode_s"] for c in cubes),
            "decode": sum(c["decode_s"] for c in cubes),
            "classify": classify_s,
            "total": time.perf_counter() - t_start,
        },
    }


def table(out: dict) -> str:
    res, diff = out["results"], out["accuracy_difference_pp"]
    f1d = out["macro_f1_difference_pp"]
    lines = [
        "| evaluation | overall accuracy | macro F1 | accuracy - original (pp) "
        "| macro F1 - original (pp) |",
        "|---|---|---|---|---|",
    ]
    for n, label in EVALS.items():
        d = f"{diff[n]:+.3f}" if n in diff else "-"
        f = f"{f1d[n]:+.3f}" if n in f1d else "-"
        lines.append(
            f"| {label} | {res[n]['accuracy']:.4f} | {res[n]['macro_f1']:.4f} | {d} | {f} |"
        )
    return "\n".join(lines)


def cube_table(out: dict) -> str:
    lines = [
        "| area | days x px | codec (CRF/QP) | KLT | bpppb | PSNR blue/green/red/nir dB "
        "| encoded bytes | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in out["cubes"]:
        codecs = ", ".join(f"{s['codec']} ({s['crf']:g})" for s in c["streams"])
        ps = "/".join(f"{v:.2f}" for v in c["psnr_per_band"].values())
        lines.append(
            f"| {c['id']} | {c['frames']} x {c['height']}x{c['width']} | {codecs} | "
            f"{'yes' if c['klt'] else 'no'} | {c['bpppb']:.3f} | {ps} | "
            f"{c['encoded_bytes']:,} | {c['compression_ratio']:.1f}x |"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 tiny areas, a few seconds")
    ap.add_argument("--cubes", type=int, help="areas (default 4; quick 2)")
    ap.add_argument("--days", type=int, help="days from 2018-01-01 (default 120; quick 35)")
    ap.add_argument("--size", type=int, help="pixels per side (default 256; quick 48)")
    ap.add_argument("--seed", type=int, default=0, help="twin, sampling and model seed")
    ap.add_argument("--train-pixels", type=int, help="per area and month (default 4000)")
    ap.add_argument("--trees", type=int, help="random forest size (default 100; quick 30)")
    ap.add_argument("--twin", type=Path, help="write (or reuse) the twin here, not in /tmp")
    ap.add_argument(
        "--out",
        type=Path,
        help="JSON (default bench/results/downstream.json, quick: downstream_quick.json)",
    )
    args = ap.parse_args(argv)
    results = ROOT / "bench" / "results"
    quick = {
        "cubes": 2,
        "days": 35,
        "size": 48,
        "train_pixels": 500,
        "trees": 30,
        "out": results / "downstream_quick.json",
    }
    full = {
        "cubes": 4,
        "days": 120,
        "size": 256,
        "train_pixels": 4000,
        "trees": 100,
        "out": results / "downstream.json",
    }
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    out = run(args, argv)
    print()
    print(cube_table(out))
    print()
    print(table(out))
    d = out["diagnostics"]
    print(
        f"\nflipped predictions (train original): {d['flipped_predictions']:,} of "
        f"{out['results']['orig_orig']['pixels']:,} "
        f"({d['flips_right_to_wrong']} right->wrong, {d['flips_wrong_to_right']} wrong->right)"
    )
    acc = out["acceptance"]
    print(f"acceptance ({acc['criterion']}): {'met' if acc['met'] else 'NOT met'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
