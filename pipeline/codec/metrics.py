"""Quality and size metrics, defined as in the xarrayvideo paper so our figures compare.

PSNR = 20 log10(range / RMSE) per band over valid pixels, range = max - min of the original
band; bpppb = compressed bits / (T * H * W * bands).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import xarray as xr

from pipeline.codec.cube import analyse, channel_array, valid_mask
from pipeline.codec.encoded import EncodedCube


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


def _working_dtype(dtype: np.dtype) -> type[np.floating]:
    """float32 where it holds every value exactly (integers up to 24 bits, float32 and
    narrower): half the memory of float64 on the verification's large windows."""
    narrow = dtype.itemsize <= (2 if dtype.kind in "uib" else 4)
    return np.float32 if narrow and dtype.kind in "uibf" else np.float64


def _sum_of_squares(err: np.ndarray, chunk: int = 1 << 20) -> float:
    """Accumulated in float64 a chunk at a time: a float32 dot over millions of values
    would drift in the last digits of a PSNR."""
    return float(
        sum(
            float(np.dot(err[i : i + chunk], err[i : i + chunk])) for i in range(0, err.size, chunk)
        )
    )


class QualityAccumulator:
    """Per-band error statistics gathered window by window, so a cube of any length is
    compared with a few frames in memory."""

    def __init__(
        self,
        original: xr.Dataset,
        roles: Mapping[str, str] | None = None,
        nodata: dict | None = None,
        with_ssim: bool = False,
    ) -> None:
        self.layout = analyse(original, roles=roles, nodata=nodata)
        self.with_ssim = with_ssim
        self.state: dict[str, dict] = {}

    def update(self, original: xr.Dataset, decoded: xr.Dataset) -> None:
        for ch in self.layout.channels:
            if ch.variable not in decoded:
                continue
            o = np.asarray(channel_array(original, self.layout, ch).values)
            d = np.asarray(channel_array(decoded, self.layout, ch).values)
            nd = self.layout.nodata[ch.variable]
            valid_o = valid_mask(o, nd)
            work = _working_dtype(o.dtype)
            ov, dv = o[valid_o].astype(work), d[valid_o].astype(work)
            err = np.abs(np.subtract(ov, dv, out=dv), out=dv)
            st = self.state.setdefault(
                ch.name,
                {
                    "sse": 0.0,
                    "n": 0,
                    "lo": math.inf,
                    "hi": -math.inf,
                    "max": 0.0,
                    "exact": True,
                    "ssim": 0.0,
                    "frames": 0,
                    "windows": [],
                },
            )
            st["sse"] += _sum_of_squares(err)
            st["n"] += int(err.size)
            if ov.size:
                st["lo"], st["hi"] = min(st["lo"], float(ov.min())), max(st["hi"], float(ov.max()))
                st["max"] = max(st["max"], float(err.max()))
            st["exact"] &= bool(np.array_equal(valid_o, valid_mask(d, nd)))
            st["exact"] &= not bool(err.any())
            if self.with_ssim:
                st["windows"].append((o, d, valid_o))

    def result(self) -> list[BandQuality]:
        out = []
        for ch in self.layout.channels:
            st = self.state.get(ch.name)
            if st is None:
                continue
            rng = st["hi"] - st["lo"] if st["n"] else 0.0
            mse = st["sse"] / st["n"] if st["n"] else 0.0
            value = math.inf if mse == 0 else 20 * math.log10((rng or 1.0) / math.sqrt(mse))
            score = None
            if self.with_ssim:
                scores = [ssim(o, d, v, rng) * len(o) for o, d, v in st["windows"]]
                score = float(sum(scores) / sum(len(o) for o, _, _ in st["windows"]))
            out.append(
                BandQuality(
                    channel=ch.name,
                    variable=ch.variable,
                    role=ch.role,
                    # no valid pixel in the source: exact when the decoded one has none either
                    psnr=value if st["n"] else (math.inf if st["exact"] else math.nan),
                    rmse=math.sqrt(mse),
                    max_abs_error=st["max"],
                    data_range=rng,
                    exact=st["exact"],
                    ssim=score,
                )
            )
        return out


def compare(
    original: xr.Dataset,
    decoded: xr.Dataset,
    with_ssim: bool = False,
    nodata: dict | None = None,
    roles: Mapping[str, str] | None = None,
) -> list[BandQuality]:
    """Per-band quality of ``decoded`` against ``original`` (image variables only)."""
    acc = QualityAccumulator(original, roles=roles, nodata=nodata, with_ssim=with_ssim)
    acc.update(original, decoded)
    return acc.result()


def compare_encoded(
    original: xr.Dataset,
    enc: EncodedCube,
    roles: Mapping[str, str] | None = None,
    window: int = 64,
) -> list[BandQuality]:
    """Quality of an encoded cube against its source, decoded ``window`` frames at a time."""
    from pipeline.codec.decode import iter_decode

    acc = QualityAccumulator(original, roles=roles)
    tdim = acc.layout.time_dim
    frame = original.sizes[acc.layout.y_dim] * original.sizes[acc.layout.x_dim]
    window = max(1, min(window, (1 << 22) // frame))  # 4 frames at 1024 x 1024
    start = 0
    for decoded in iter_decode(enc, window=window):
        stop = start + decoded.sizes[tdim]
        acc.update(original.isel({tdim: slice(start, stop)}), decoded)
        start = stop
    return acc.result()


def raw_nbytes(ds: xr.Dataset) -> int:
    """Size of the image variables as stored at the source (int16 for scaled S2 bands, not
    the float they decode to): the denominator of the compression ratio."""
    layout = analyse(ds)
    return int(
        sum(
            ds[v].size * np.dtype(ds[v].encoding.get("dtype", ds[v].dtype)).itemsize
            for v in layout.image_vars
        )
    )


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
