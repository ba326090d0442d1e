"""The verification report: a Markdown summary and PNG plots written next to the shards."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.verify import Verification  # noqa: E402

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


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plots(v: Verification, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    lossy = [c for c in v.checks if c.role == "continuous" and math.isfinite(c.psnr)]
    bands = sorted({c.band for c in lossy})
    paths = []

    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(bands) + 2), 3.5))
    if bands:
        ax.boxplot([[c.psnr for c in lossy if c.band == b] for b in bands], tick_labels=bands)
        req = [c.required for c in lossy if c.required is not None]
        if req:
            ax.axhline(min(req), color="tab:red", ls="--", lw=1, label=f"threshold {min(req):g} dB")
            ax.legend(loc="lower right", fontsize=8)
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("PSNR per band over samples")
    paths.append(_save(fig, out / "psnr_per_band.png"))

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for sid, meta in v.samples.items():
        ps = [c.psnr for c in lossy if c.sample == sid]
        if ps and meta.get("bpppb") is not None:
            ax.scatter(meta["bpppb"], min(ps), s=25)
            ax.annotate(sid[:18], (meta["bpppb"], min(ps)), fontsize=6)
    ax.set_xlabel("bits per pixel per band")
    ax.set_ylabel("min PSNR over bands (dB)")
    ax.set_title("Quality vs rate per cube")
    paths.append(_save(fig, out / "psnr_vs_bpppb.png"))

    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(v.samples) + 2), 3.5))
    ids = list(v.samples)
    raw = [(v.samples[i].get("raw_bytes") or 0) / 1e6 for i in ids]
    enc = [(v.samples[i].get("encoded_bytes") or 0) / 1e6 for i in ids]
    xs = range(len(ids))
    ax.bar([x - 0.2 for x in xs], raw, width=0.4, label="raw")
    ax.bar([x + 0.2 for x in xs], enc, width=0.4, label="encoded")
    ax.set_xticks(list(xs), [i[:12] for i in ids], rotation=45, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("MB")
    ax.set_title("Size per cube")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "sizes.png"))
    return paths


def write_report(v: Verification, folder: str | Path, title: str = "Verification report") -> Path:
    folder = Path(folder)
    plots = _plots(v, folder / PLOTS)
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


def codec_summary(v: Verification) -> dict[str, dict]:
    """Stream settings as recorded in the first sample's metadata."""
    for meta in v.samples.values():
        codec = meta.get("codec")
        if codec:
            return json.loads(codec) if isinstance(codec, str) else codec
    return {}
