"""The verification report: a Markdown summary and PNG plots written next to the shards."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from pipeline.publish.plotscale import (
    PSNR_SPAN,
    RATE_SPAN,
    axis_limits,
    plain_ticks,
    point_labels,
)
from pipeline.publish.verify import BandCheck, Verification

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_MD = "REPORT.md"
PLOTS = "report"
MAX_BARS = 60  # cubes drawn as a bar each in the compression plot; more: a histogram


def _fmt(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "lossless"
    return f"{v:.{digits}f}"


def _db(v: float) -> str:
    return f"{v:.1f} dB" if math.isfinite(v) else "lossless"


def checks_by_sample(v: Verification) -> dict[str, list[BandCheck]]:
    """Each sample's band checks, gathered in one pass (not one pass per sample: a dataset
    of 40,000 cubes has 160,000 checks)."""
    out: dict[str, list[BandCheck]] = {}
    for c in v.checks:
        out.setdefault(c.sample, []).append(c)
    return out


def sample_table(v: Verification) -> str:
    """One row per sample: min PSNR, bpppb, ratio, sizes, verdict."""
    lines = [
        "| sample | split | min PSNR (dB) | bpppb | ratio | raw MB | encoded MB | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_sample = checks_by_sample(v)
    for sid, meta in v.samples.items():
        checks = by_sample.get(sid, [])
        lossy = [c.psnr for c in checks if c.role == "continuous"]
        ok = all(c.passed for c in checks)
        lines.append(
            f"| {sid} | {meta.get('split') or '-'} | {_fmt(min(lossy) if lossy else None)} | "
            f"{_fmt(meta.get('bpppb'), 3)} | {_fmt(meta.get('ratio'), 1)} | "
            f"{_fmt((meta.get('raw_bytes') or 0) / 1e6, 2)} | "
            f"{_fmt((meta.get('encoded_bytes') or 0) / 1e6, 2)} | {'pass' if ok else 'FAIL'} |"
        )
    return "\n".join(lines)


def band_table(v: Verification) -> str:
    bands: dict[str, list] = {}
    for c in v.checks:
        bands.setdefault(c.band, []).append(c)
    lines = [
        "| band | role | min PSNR | mean PSNR | required | passed |",
        "|---|---|---|---|---|---|",
    ]
    for band, cs in bands.items():
        vals = [c.psnr for c in cs]
        finite = [x for x in vals if math.isfinite(x)]
        mean = sum(finite) / len(finite) if finite else math.inf
        req = cs[0].required
        lines.append(
            f"| {band} | {cs[0].role} | {_fmt(min(vals))} | {_fmt(mean)} | {_fmt(req)} | "
            f"{sum(c.passed for c in cs)}/{len(cs)} |"
        )
    return "\n".join(lines)


def _pyplot() -> Any:
    """pyplot on the Agg backend, imported on first plot: the encode path imports this
    module, and pyplot with its fonts is 25 MB of a process that must stay under 1 GiB."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _band_order(v: Verification) -> list[str]:
    """Continuous bands in the order the data holds them (first appearance in the checks)."""
    return list(
        dict.fromkeys(c.band for c in v.checks if c.role == "continuous" and math.isfinite(c.psnr))
    )


def _plots(v: Verification, out: Path) -> list[Path]:
    """The report's three plots: PSNR per band, quality vs rate, compression per cube."""
    out.mkdir(parents=True, exist_ok=True)
    lossy = [c for c in v.checks if c.role == "continuous" and math.isfinite(c.psnr)]
    req = [c.required for c in lossy if c.required is not None]
    return [
        _psnr_per_band(lossy, _band_order(v), req, out / "psnr_per_band.png"),
        _psnr_vs_bpppb(v, lossy, req, out / "psnr_vs_bpppb.png"),
        _sizes(v, out / "sizes.png"),
    ]


def _psnr_per_band(lossy: list[BandCheck], bands: list[str], req: list[float], path: Path) -> Path:
    """A box per band over the samples, with the required PSNR as a line."""
    fig, ax = _pyplot().subplots(figsize=(max(5, 0.9 * len(bands) + 2), 4))
    if bands:
        ax.boxplot([[c.psnr for c in lossy if c.band == b] for b in bands], tick_labels=bands)
        need = [min(req)] if req else []
        for y in need:
            ax.axhline(y, color="tab:red", ls="--", lw=1.2, label=f"required {y:g} dB")
        if need:
            ax.legend(loc="lower right", fontsize=9)
        ax.set_ylim(*axis_limits([c.psnr for c in lossy], need, PSNR_SPAN))
    plain_ticks(ax, "y")
    ax.set_xlabel("band", fontsize=10)
    ax.set_ylabel("PSNR (dB)", fontsize=10)
    ax.set_title("PSNR per band over samples (bands in data order)", fontsize=11)
    ax.tick_params(labelsize=9)
    return _save(fig, path)


def _psnr_vs_bpppb(v: Verification, lossy: list[BandCheck], req: list[float], path: Path) -> Path:
    """One point per cube: its worst band's PSNR against its bpppb, coloured by split."""
    fig, ax = _pyplot().subplots(figsize=(6.5, 4.5))
    splits = sorted({str(m.get("split") or "-") for m in v.samples.values()})
    colours = dict(
        zip(splits, _pyplot().rcParams["axes.prop_cycle"].by_key()["color"], strict=False)
    )
    worst: dict[str, float] = {}
    for c in lossy:
        worst[c.sample] = min(c.psnr, worst.get(c.sample, math.inf))
    points = {
        sid: (float(meta["bpppb"]), worst[sid])
        for sid, meta in v.samples.items()
        if meta.get("bpppb") is not None and sid in worst
    }
    by_split: dict[str, list[tuple[float, float]]] = {}
    for sid, point in points.items():
        by_split.setdefault(str(v.samples[sid].get("split") or "-"), []).append(point)
    shown = set(by_split)
    for split, xy in by_split.items():  # one collection per split, not one per cube
        xs, ys = zip(*xy, strict=True)
        ax.scatter(xs, ys, s=40, color=colours.get(split), label=f"split {split}")
    floor = [min(req)] if req else []
    if floor:
        ax.axhline(floor[0], color="tab:red", ls="--", lw=1.2, label=f"required {floor[0]:g} dB")
    if shown or floor:
        ax.legend(fontsize=9, loc="best")
    rates, psnrs = [r for r, _ in points.values()], [q for _, q in points.values()]
    ax.set_xlim(*axis_limits(rates, rel_span=RATE_SPAN, min_span=0.01, pad=0.15, floor=0.0))
    ax.set_ylim(*axis_limits(psnrs, floor, PSNR_SPAN, pad=0.15))
    plain_ticks(ax)
    for (rate, psnr), text in point_labels(points, ax.get_xlim(), ax.get_ylim()):
        ax.annotate(text, (rate, psnr), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("rate (bits per pixel per band, lower = smaller)", fontsize=10)
    ax.set_ylabel("worst band PSNR (dB)", fontsize=10)
    ax.set_title("Quality vs rate, one point per cube", fontsize=11)
    ax.tick_params(labelsize=9)
    return _save(fig, path)


def _sizes(v: Verification, path: Path) -> Path:
    """A bar per cube: compression ratio, annotated with raw and encoded MB (beyond
    :data:`MAX_BARS` cubes, a histogram of the ratios: a bar per cube of 40,000 cubes is a
    picture 2 million pixels high)."""
    ids = list(v.samples)
    raw = [(v.samples[i].get("raw_bytes") or 0) / 1e6 for i in ids]
    enc = [(v.samples[i].get("encoded_bytes") or 0) / 1e6 for i in ids]
    ratio = [r / e if e else 0.0 for r, e in zip(raw, enc, strict=True)]
    if len(ids) > MAX_BARS:
        return _ratio_histogram(ratio, sum(raw), sum(enc), path)
    fig, ax = _pyplot().subplots(figsize=(7, max(2.5, 0.45 * len(ids) + 1.5)))
    ys = list(range(len(ids)))
    ax.barh(ys, ratio, color="tab:blue", height=0.6)
    for y, r, mb_raw, mb_enc in zip(ys, ratio, raw, enc, strict=True):
        ax.annotate(
            f" {r:.1f}x  ({mb_raw:.2f} MB -> {mb_enc:.2f} MB)", (r, y), va="center", fontsize=8
        )
    ax.set_yticks(ys, [i[:24] for i in ids], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, (max(ratio, default=0.0) or 1.0) * 1.6)  # room for the annotations
    plain_ticks(ax, "x")
    ax.set_xlabel("compression ratio (raw size / encoded size, higher = smaller)", fontsize=10)
    ax.set_title("Compression per cube", fontsize=11)
    return _save(fig, path)


def _ratio_histogram(ratio: list[float], raw: float, enc: float, path: Path) -> Path:
    fig, ax = _pyplot().subplots(figsize=(7, 4))
    ax.hist(ratio, bins=min(60, max(10, len(set(ratio)))), color="tab:blue")
    plain_ticks(ax)
    ax.set_xlabel("compression ratio (raw size / encoded size, higher = smaller)", fontsize=10)
    ax.set_ylabel("cubes", fontsize=10)
    ax.set_title(
        f"Compression of {len(ratio):,} cubes: {raw:,.1f} MB -> {enc:,.1f} MB", fontsize=11
    )
    return _save(fig, path)


def _stretch(img: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.clip((img - lo) / np.where(hi > lo, hi - lo, 1), 0, 1)


def _plane(values: np.ndarray) -> np.ndarray:
    """One frame of a band as a 2-D float image, whatever its size: a 1 x 1 or 1 x N frame
    keeps both axes (squeezing them made a 1 x 1 RGB frame a vector imshow refused)."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim < 2:
        return a.reshape(1, -1)
    return a.reshape(a.shape[-2:])


def _frame_psnr(orig: np.ndarray, dec: np.ndarray) -> float:
    """PSNR over the valid pixels of one frame, each band (last axis) over its own range."""
    valid = np.isfinite(orig) & np.isfinite(dec)
    if not valid.any():
        return math.inf
    rng = np.nanmax(orig, axis=(0, 1)) - np.nanmin(orig, axis=(0, 1))
    mse = float(np.mean(((dec - orig) / np.where(rng > 0, rng, 1))[valid] ** 2))
    return -10 * math.log10(mse) if mse > 0 else math.inf


def _error_image(orig: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Absolute error of one band in % of its range in this frame, NaN where either misses."""
    valid = np.isfinite(orig) & np.isfinite(dec)
    if not valid.any():
        return np.zeros(orig.shape)
    rng = float(np.nanmax(orig) - np.nanmin(orig)) or 1.0
    return np.where(valid, np.abs(dec - orig), np.nan) / rng * 100


def error_title(band: str, psnr: float, verified: bool) -> str:
    """The error image's title: which band it shows and why that one."""
    why = "worst band of the sample" if verified else "worst shown band in this frame"
    return f"abs error of {band} (% of its range)\n{why}: PSNR {_db(psnr)}"


def sample_panel(
    original: xr.Dataset,
    decoded: xr.Dataset,
    bands: list[str],
    out: Path,
    title: str,
    worst: tuple[str, float] | None = None,
) -> Path:
    """Original | decoded | absolute error for one frame of one sample.

    ``original`` and ``decoded`` hold one time step of ``bands`` (three bands: shown as
    RGB, else the first band in grey). Both images share the 2-98 % stretch of this frame of
    the original, per band: differences are not hidden by separate scaling, and the frame
    fills the grey levels instead of being washed out by a stretch of other dates. The error
    image is of ``worst`` (band, PSNR from verification; the datasets must hold it too), the
    band whose errors are largest, else of the shown band with the lowest PSNR in this frame.
    """
    out.mkdir(parents=True, exist_ok=True)
    orig = np.stack([_plane(original[b].values) for b in bands], -1)
    dec = np.stack([_plane(decoded[b].values) for b in bands], -1)
    lo = np.array([np.nanpercentile(orig[..., i], 2) for i in range(len(bands))])
    hi = np.array([np.nanpercentile(orig[..., i], 98) for i in range(len(bands))])
    if worst is None:
        psnrs = [_frame_psnr(orig[..., i : i + 1], dec[..., i : i + 1]) for i in range(len(bands))]
        worst, verified = min(zip(bands, psnrs, strict=True), key=lambda bp: bp[1]), False
    else:
        verified = True
    err = _error_image(_plane(original[worst[0]].values), _plane(decoded[worst[0]].values))
    rgb = len(bands) == 3
    show_o, show_d = _stretch(orig, lo, hi), _stretch(dec, lo, hi)
    if not rgb:
        show_o, show_d = show_o[..., 0], show_d[..., 0]
    fig, axes = _pyplot().subplots(1, 3, figsize=(12, 4.6))
    kw = {} if rgb else {"cmap": "gray", "vmin": 0, "vmax": 1}
    for ax, img, name in ((axes[0], show_o, "original"), (axes[1], show_d, "decoded")):
        ax.imshow(np.nan_to_num(img, nan=0.0), interpolation="nearest", **kw)
        ax.set_title(f"{name} (2-98 % stretch of this frame)", fontsize=10)
    im = axes[2].imshow(err, cmap="magma", interpolation="nearest", vmin=0)
    axes[2].set_title(error_title(worst[0], worst[1], verified), fontsize=10)
    fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04, label="abs error (% of range)")
    for ax in axes:
        ax.set_xlabel("x (px)", fontsize=9)
        ax.set_ylabel("y (px)", fontsize=9)
        ax.tick_params(labelsize=8)
    label = "RGB = " + "/".join(bands) if rgb else bands[0]
    psnr = _frame_psnr(orig, dec)
    fig.suptitle(f"{title}: {label}, PSNR of this frame {_db(psnr)}", fontsize=11)
    return _save(fig, out / "sample.png")


def write_report(
    v: Verification,
    folder: str | Path,
    title: str = "Verification report",
    panel: Path | None = None,
) -> Path:
    """REPORT.md plus plots; ``panel`` is an already drawn :func:`sample_panel` image."""
    folder = Path(folder)
    plots = _plots(v, folder / PLOTS)
    if panel is not None:
        plots.insert(0, panel)
    raw = sum((m.get("raw_bytes") or 0) for m in v.samples.values())
    enc = sum((m.get("encoded_bytes") or 0) for m in v.samples.values())
    body = [
        f"# {title}",
        "",
        f"**Verdict: {'PASS' if v.passed else 'FAIL'}** - {v.summary()}",
        "",
        f"Samples: {len(v.samples)}; raw {raw / 1e6:.1f} MB -> encoded {enc / 1e6:.1f} MB "
        f"({raw / enc if enc else math.nan:.1f}x).",
        "",
        "## Samples",
        "",
        sample_table(v),
        "",
        "## Bands",
        "",
        band_table(v),
        "",
    ]
    if not v.passed:
        body += ["## Failures", "", *[f"- {f}" for f in v.failures()], ""]
    body += ["## Plots", ""] + [f"![{p.stem}]({PLOTS}/{p.name})" for p in plots] + [""]
    path = folder / REPORT_MD
    tmp = path.with_name(path.name + ".part")
    tmp.write_text("\n".join(body))
    tmp.replace(path)
    return path
