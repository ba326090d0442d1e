"""The verification report: a Markdown summary and PNG plots written next to the shards."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from pipeline.publish.verify import BandCheck, Verification

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_MD = "REPORT.md"
PLOTS = "report"


def _fmt(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "lossless"
    return f"{v:.{digits}f}"


def sample_table(v: Verification) -> str:
    """One row per sample: min PSNR, bpppb, ratio, sizes, verdict."""
    lines = [
        "| sample | split | min PSNR (dB) | bpppb | ratio | raw MB | encoded MB | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for sid, meta in v.samples.items():
        checks = [c for c in v.checks if c.sample == sid]
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
        if req:
            need = min(req)
            ax.axhline(need, color="tab:red", ls="--", lw=1.2, label=f"required {need:g} dB")
            ax.legend(loc="lower right", fontsize=9)
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
    shown: set[str] = set()
    for sid, meta in v.samples.items():
        ps = [c.psnr for c in lossy if c.sample == sid]
        if not ps or meta.get("bpppb") is None:
            continue
        split = str(meta.get("split") or "-")
        ax.scatter(
            meta["bpppb"],
            min(ps),
            s=40,
            color=colours.get(split),
            label=f"split {split}" if split not in shown else None,
        )
        shown.add(split)
        ax.annotate(
            sid[:24],
            (meta["bpppb"], min(ps)),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    if req:
        ax.axhline(min(req), color="tab:red", ls="--", lw=1.2, label=f"required {min(req):g} dB")
    if shown or req:
        ax.legend(fontsize=9, loc="best")
    ax.set_xlabel("bits per pixel per band (lower = smaller)", fontsize=10)
    ax.set_ylabel("worst band PSNR (dB)", fontsize=10)
    ax.set_title("Quality vs rate, one point per cube", fontsize=11)
    ax.tick_params(labelsize=9)
    ax.margins(x=0.15, y=0.15)
    return _save(fig, path)


def _sizes(v: Verification, path: Path) -> Path:
    """A bar per cube: compression ratio, annotated with raw and encoded MB."""
    ids = list(v.samples)
    raw = [(v.samples[i].get("raw_bytes") or 0) / 1e6 for i in ids]
    enc = [(v.samples[i].get("encoded_bytes") or 0) / 1e6 for i in ids]
    ratio = [r / e if e else 0.0 for r, e in zip(raw, enc, strict=True)]
    fig, ax = _pyplot().subplots(figsize=(7, max(2.5, 0.45 * len(ids) + 1.5)))
    ys = list(range(len(ids)))
    ax.barh(ys, ratio, color="tab:blue", height=0.6)
    for y, r, mb_raw, mb_enc in zip(ys, ratio, raw, enc, strict=True):
        ax.annotate(
            f" {r:.1f}x  ({mb_raw:.2f} MB -> {mb_enc:.2f} MB)", (r, y), va="center", fontsize=8
        )
    ax.set_yticks(ys, [i[:24] for i in ids], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, max(ratio or [1]) * 1.6)
    ax.set_xlabel("compression ratio (raw size / encoded size, higher = smaller)", fontsize=10)
    ax.set_title("Compression per cube", fontsize=11)
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


def sample_panel(
    original: xr.Dataset,
    decoded: xr.Dataset,
    bands: list[str],
    out: Path,
    title: str,
) -> Path:
    """Original | decoded | absolute error for one frame of one sample.

    ``original`` and ``decoded`` hold one time step of ``bands`` (three bands: shown as
    RGB, else the first band in grey). Both images share the original's 2-98 % stretch, so
    differences are not hidden by separate scaling; the error is in % of the band's range.
    """
    out.mkdir(parents=True, exist_ok=True)
    orig = np.stack([_plane(original[b].values) for b in bands], -1)
    dec = np.stack([_plane(decoded[b].values) for b in bands], -1)
    valid = np.isfinite(orig) & np.isfinite(dec)
    lo = np.array([np.nanpercentile(orig[..., i], 2) for i in range(len(bands))])
    hi = np.array([np.nanpercentile(orig[..., i], 98) for i in range(len(bands))])
    rng = np.array([np.nanmax(orig[..., i]) - np.nanmin(orig[..., i]) for i in range(len(bands))])
    err = np.where(valid, np.abs(dec - orig), np.nan) / np.where(rng > 0, rng, 1) * 100
    mse = np.nanmean(((dec - orig) / np.where(rng > 0, rng, 1))[valid] ** 2) if valid.any() else 0
    psnr = -10 * math.log10(mse) if mse > 0 else math.inf
    rgb = len(bands) == 3
    show_o = _stretch(orig, lo, hi)
    show_d = _stretch(dec, lo, hi)
    if not rgb:
        show_o, show_d = show_o[..., 0], show_d[..., 0]
    fig, axes = _pyplot().subplots(1, 3, figsize=(12, 4.4))
    kw = {} if rgb else {"cmap": "gray", "vmin": 0, "vmax": 1}
    for ax, img, name in ((axes[0], show_o, "original"), (axes[1], show_d, "decoded")):
        ax.imshow(np.nan_to_num(img, nan=0.0), interpolation="nearest", **kw)
        ax.set_title(name, fontsize=10)
    worst = np.nanmax(err, axis=-1) if np.isfinite(err).any() else np.zeros(err.shape[:2])
    im = axes[2].imshow(worst, cmap="magma", interpolation="nearest", vmin=0)
    axes[2].set_title("abs error, worst band (% of band range)", fontsize=10)
    fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    label = "RGB = " + "/".join(bands) if rgb else bands[0]
    fig.suptitle(f"{title}: {label}, PSNR of this frame {psnr:.1f} dB", fontsize=11)
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
