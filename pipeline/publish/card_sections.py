"""The card's sections on how the data was encoded and how well it verified: the recipe's
settings, then the ones each stream of each sample really used, and the per-sample and
per-band verification tables."""

from __future__ import annotations

import json
from typing import Any

from pipeline.codec.chunkcodecs import chunk_codec
from pipeline.publish.report import band_table, sample_table
from pipeline.publish.verify import Verification
from pipeline.recipe import Recipe
from pipeline.recipe_tables import CodecSpec


def stream_rows(v: Verification) -> list[str]:
    """One row per stream name with the settings of every sample, not just the first one:
    a PSNR target gives each sample its own CRF."""
    per_stream: dict[str, dict[str, Any]] = {}
    for sid, meta in v.samples.items():
        codec = meta.get("codec") or {}
        streams = json.loads(codec) if isinstance(codec, str) else codec
        for name, s in streams.items():
            row = per_stream.setdefault(
                name, {"codec": set(), "pix_fmt": set(), "engine": set(), "bands": [], "crf": {}}
            )
            row["codec"].add(str(s.get("codec")))
            row["pix_fmt"].add(str(s.get("pix_fmt")))
            if s.get("engine") and chunk_codec(str(s.get("codec"))) is None:  # video only
                row["engine"].add(str(s["engine"]))
            row["bands"] = row["bands"] or list(s.get("bands", []))
            lossless = s.get("lossless") or s.get("crf") is None
            row["crf"][sid] = "lossless" if lossless else f"{float(s['crf']):g}"
    lines = [
        "| stream | codec | engine | pix_fmt | bands | CRF per sample |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in per_stream.items():
        crfs = row["crf"]
        values = sorted(set(crfs.values()))
        if len(values) == 1:
            crf = f"{values[0]} (all {len(crfs)})"
        elif len(crfs) <= 6:
            crf = ", ".join(f"{sid}: {c}" for sid, c in crfs.items())
        else:
            nums = sorted(float(c) for c in values if c != "lossless")
            crf = f"{nums[0]:g} to {nums[-1]:g} over {len(crfs)} samples"
            if "lossless" in values:
                crf += " (some lossless)"
        lines.append(
            f"| {name} | {', '.join(sorted(row['codec']))} | "
            f"{', '.join(sorted(row['engine'])) or '-'} | {', '.join(sorted(row['pix_fmt']))} | "
            f"{', '.join(row['bands'])} | {crf} |"
        )
    return lines


def _rate(c: CodecSpec) -> str:
    """How the quantiser was chosen: a PSNR target per band group, or a fixed CRF."""
    if c.psnr is not None or any(g.psnr is not None for g in c.groups):
        targets = ", ".join(
            f"{g.name}: {g.psnr or c.psnr} dB" if (g.psnr or c.psnr) else f"{g.name}: CRF {c.crf:g}"
            for g in c.groups
        )
        return f"at the cheapest CRF meeting a PSNR target per band group ({targets or c.psnr})"
    return f"at a fixed CRF ({c.crf:g} unless a band group sets its own)"


def encoding_section(recipe: Recipe, v: Verification) -> str:
    """The recipe's codec settings, then the ones each stream of each sample really used."""
    c = recipe.codec
    codec = f"codec {c.codec}"
    if c.codec == "auto":  # only then was the codec chosen per group
        codec += (
            ": per band group the codec - VVC at 10 bits or x265/AV1 at 12 bits - that met "
            "the target in the fewest bytes"
        )
    return f"""## Encoding

Continuous bands are video streams ({codec}; preset {c.preset}, keyframe every
{c.keyint} frames) {_rate(c)}; bands whose
detail correlates are decorrelated first (a KLT per group, stored with the sample). Class
layers are stored losslessly as zstd chunks of their codes and validity masks as
bit-packed zstd. Everything that is not a (time, y, x) stack is stored losslessly. Every
video stream decodes with PyAV alone; class layers and masks with zstd.

{access_paragraph(recipe, v)}{error_bound_paragraph(recipe, v)}

Settings actually used, per stream and sample:

{chr(10).join(stream_rows(v))}"""


ACCESS_TEXT = {
    "whole": "whole cubes (long GOPs, decorrelated band groups: the fewest bits)",
    "windows": "short time windows (a keyframe every 16 frames at most)",
    "bands": "single bands (each band in a stream of its own, no KLT across bands)",
    "windows+bands": "single bands and short time windows",
}


def access_paragraph(recipe: Recipe, v: Verification) -> str:
    """What reading part of a sample costs, as measured on the published samples: the
    recipe's ``access`` option trades bits for it (docs/BENCHMARKS.md, "Access")."""
    rows = v.samples.values()
    shares = sorted(float(x) for m in rows if (x := m.get("band_read_share")) is not None)
    frames = sorted(int(x) for m in rows if (x := m.get("window_frames")) is not None)
    access = recipe.codec.access
    text = f"Access: `{access}`, encoded for reading {ACCESS_TEXT[access]}."
    if shares and frames:
        text += (
            f" Measured on these samples (median): one band alone reads "
            f"{100 * shares[len(shares) // 2]:.0f} % of a sample's bytes, and an 8-frame "
            f"window decodes {frames[len(frames) // 2]} frames "
            "(`open_sample(..., variables=[band], time=slice(t, t + 8))`)."
        )
    return text


def error_bound_paragraph(recipe: Recipe, v: Verification) -> str:
    """Error-bounded mode (``max_error``): the bound asked for, and per band the bound
    (absolute, the largest over samples) and the largest error measured on the decoded
    samples. Empty when no band is bounded."""
    c = recipe.codec
    asked = [f"{g.name}: {g.max_error}" for g in c.groups if g.max_error is not None]
    bounded = [k for k in v.checks if k.max_error is not None]
    if c.max_error is None and not asked and not bounded:
        return ""
    text = (
        "\n\nError-bounded mode (`max_error`"
        + (f" = {c.max_error}" if c.max_error is not None else "")
        + (f"; {', '.join(asked)}" if asked else "")
        + "): every valid value of a bounded band is within its bound of the source (a "
        "correction layer added after the video decode, in `corrections.k.zst`)."
    )
    bands: dict[str, tuple[float, float]] = {}
    for k in bounded:
        bound, got = bands.get(k.band, (0.0, 0.0))
        bands[k.band] = (max(bound, k.max_error or 0.0), max(got, k.max_abs_error or 0.0))
    if bands:
        rows = [f"| {b} | {bound:.6g} | {got:.6g} |" for b, (bound, got) in bands.items()]
        text += "\n\n| band | bound (largest) | max abs error reached |\n|---|---|---|\n"
        text += "\n".join(rows)
    return text


def verification_section(recipe: Recipe, v: Verification) -> str:
    """The threshold, the verdict and the per-sample and per-band tables."""
    verdict = "PASS" if v.passed else "FAIL"
    return f"""## Verification

Every sample was decoded from the published shards and compared with its source; the
threshold is {recipe.verify.psnr_min} dB per band (PSNR over valid pixels, range = max - min
of the original band), class layers and masks bit-exact. Verdict: **{verdict}**.

{sample_table(v)}

{band_table(v)}

See `REPORT.md` for plots."""
