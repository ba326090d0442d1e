"""Quality and size metrics, defined as in the xarrayvideo paper so our figures compare.

PSNR = 20 log10(range / RMSE) per band over valid pixels, range = max - min of the original
band; bpppb = compressed bits / (T * H * W * bands).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import xarray as xr

from pipeline.cube import analyse, channel_array, valid_mask
from pipeline.encoded import EncodedCube


@dataclass(frozen=True)
class BandQuality:
    channel: str
    variable: str
    role: str
    psnr: float
    rmse: float
    max_abs_error: float
    data_range: float
    exact: bool
    ssim: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def psnr(
    original: np.ndarray,
    decoded: np.ndarray,
    valid: np.ndarray | None = None,
    data_range: float | None = None,
) -> float:
    o = np.asarray(original, dtype=np.float64)
    d = np.asarray(decoded, dtype=np.float64)
    if valid is None:
        valid = np.isfinite(o)
    o, d = o[valid], d[valid]
    if o.size == 0:
        return math.nan
    rng = float(o.max() - o.min()) if data_range is None else data_range
    mse = float(np.mean((o - d) ** 2))
    if mse == 0:
        return math.inf
    return 20 * math.log10((rng if rng > 0 else 1.0) / math.sqrt(mse))


def ssim(original: np.ndarray, decoded: np.ndarray, valid: np.ndarray, data_range: float) -> float:
    """Mean windowed SSIM over frames; invalid pixels take the original's value in both."""
    from skimage.metrics import structural_similarity

    o = np.where(valid, original, 0).astype(np.float64)
    d = np.where(valid, decoded, 0).astype(np.float64)
    h, w = o.shape[-2:]
    win = min(7, h - (1 - h % 2), w - (1 - w % 2))
    if win < 3:
        return math.nan
    scores = [
        structural_similarity(a, b, data_range=data_range or 1.0, win_size=win)
        for a, b in zip(o, d, strict=True)
    ]
    return float(np.mean(scores))


def compare(
    original: xr.Dataset, decoded: xr.Dataset, with_ssim: bool = False, nodata: dict | None = None
) -> list[BandQuality]:
    """Per-band quality of ``decoded`` against ``original`` (image variables only)."""
    layout = analyse(original, nodata=nodata)
    out = []
    for ch in layout.channels:
        if ch.variable not in decoded:
            continue
        o = np.asarray(channel_array(original, layout, ch).values)
        d = np.asarray(channel_array(decoded, layout, ch).values)
        nd = layout.nodata[ch.variable]
        valid_o = valid_mask(o, nd)
        valid_d = valid_mask(d, nd)
        mask_exact = bool(np.array_equal(valid_o, valid_d))
        ov, dv = o[valid_o].astype(np.float64), d[valid_o].astype(np.float64)
        rng = float(ov.max() - ov.min()) if ov.size else 0.0
        err = np.abs(ov - dv)
        rmse = float(np.sqrt(np.mean(err**2))) if err.size else 0.0
        out.append(
            BandQuality(
                channel=ch.name,
                variable=ch.variable,
                role=ch.role,
                psnr=psnr(o, d, valid_o, rng),
                rmse=rmse,
                max_abs_error=float(err.max()) if err.size else 0.0,
                data_range=rng,
                exact=mask_exact and bool(np.array_equal(ov, dv)),
                ssim=ssim(o, d, valid_o, rng) if with_ssim else None,
            )
        )
    return out


def raw_nbytes(ds: xr.Dataset) -> int:
    """In-memory size of the image variables, the denominator of the compression ratio."""
    layout = analyse(ds)
    return int(sum(ds[v].size * ds[v].dtype.itemsize for v in layout.image_vars))


def n_band_pixels(ds_or_enc: xr.Dataset | EncodedCube) -> int:
    """T * H * W * bands over image variables."""
    if isinstance(ds_or_enc, EncodedCube):
        m = ds_or_enc.manifest
        h, w = m.frame_shape
        return m.n_frames * h * w * len(m.channels)
    layout = analyse(ds_or_enc)
    t, h, w = (ds_or_enc.sizes[d] for d in (layout.time_dim, layout.y_dim, layout.x_dim))
    return t * h * w * len(layout.channels)


def bpppb(enc: EncodedCube) -> float:
    return 8 * enc.nbytes / n_band_pixels(enc)


def compression_ratio(ds: xr.Dataset, enc: EncodedCube) -> float:
    return raw_nbytes(ds) / enc.nbytes
