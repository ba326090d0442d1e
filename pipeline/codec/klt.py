"""Band decorrelation: a per-group KLT (principal components) before quantisation.

Bands of one scene are strongly correlated, and a video codec codes each plane on its own;
rotating a group's bands onto their principal axes puts most of the signal in the first
component and leaves the others small, so the same quantiser step spends far fewer bits on
them. The rotation is orthonormal in band-normalised units (each band scaled by its valid
range), so a component's coding error spreads evenly over the bands and every band's PSNR
(defined on its own range) sees the same error: per-band floors stay meaningful.

All components of a group share one quantiser step, set by the widest component bound; a
per-component step would re-amplify the small components and undo the gain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.codec.quantize import Quantiser


@dataclass
class Moments:
    """Running sums over pixels valid in every band of a group (one streaming pass).

    The mean comes from the values; the covariance from horizontal pixel differences.
    A video codec predicts each block from its neighbours and the previous frame and codes
    what is left, so it is the correlation of that detail across bands, not of the values,
    that a KLT can remove: iid sensor noise on correlated bands correlates in value but
    not in detail, and a KLT there only costs bits.
    """

    n_bands: int

    def __post_init__(self) -> None:
        self.count = 0
        self.sum = np.zeros(self.n_bands)
        self.n_diff = 0
        self.outer = np.zeros((self.n_bands, self.n_bands))

    def add(self, bands: list[np.ndarray], valid: np.ndarray | None, stride: int = 2) -> None:
        """bands: (frames, H, W) each; rows on a ``stride`` grid are enough for a basis."""
        x = np.stack([b[:, ::stride] for b in bands], axis=-1).astype(np.float64)
        v = None if valid is None else valid[:, ::stride]
        vals = x.reshape(-1, self.n_bands) if v is None else x[v]
        self.count += len(vals)
        self.sum += vals.sum(axis=0)
        d = x[:, :, 1:] - x[:, :, :-1]
        if v is not None:
            d = d[v[:, :, 1:] & v[:, :, :-1]]
        d = d.reshape(-1, self.n_bands)
        self.n_diff += len(d)
        self.outer += d.T @ d

    def covariance(self) -> np.ndarray | None:
        """Covariance of the bands' horizontal detail (differences have zero mean)."""
        if self.n_diff < 2:
            return None
        return self.outer / self.n_diff

    def mean(self) -> np.ndarray:
        return self.sum / max(self.count, 1)


@dataclass(frozen=True)
class Klt:
    """Forward: n = (x - band_offset) / band_scale; c = (n - mean) @ matrix.
    Inverse: x = band_offset + band_scale * (mean + c @ matrix.T)."""

    band_offset: np.ndarray  # (B,)
    band_scale: np.ndarray  # (B,)
    mean: np.ndarray  # (B,) in normalised units
    matrix: np.ndarray  # (B, K) orthonormal columns, strongest component first
    comp_offset: np.ndarray  # (K,)
    step: float

    @property
    def n_components(self) -> int:
        return self.matrix.shape[1]

    def quantisers(self, bits: int) -> list[Quantiser]:
        return [Quantiser(float(o), self.step, bits) for o in self.comp_offset]

    def forward(self, normalised: np.ndarray) -> np.ndarray:
        """(frames, B, H, W) normalised bands -> (frames, K, H, W) components (float32)."""
        centred = normalised - self.mean.astype(np.float32)[None, :, None, None]
        return np.einsum("tbhw,bk->tkhw", centred, self.matrix.astype(np.float32))

    def inverse(self, components: np.ndarray, work: type = np.float64) -> np.ndarray:
        """(frames, K, H, W) components -> (frames, B, H, W) band values in ``work``: one
        BLAS matrix product (the decoder folds all of this into one affine map, see
        :func:`pipeline.codec.codemap.klt_affine`)."""
        t, k, h, w = components.shape
        flat = components.reshape(t, k, h * w).astype(work, copy=False)
        norm = np.matmul(self.matrix.astype(work), flat).reshape(t, -1, h, w)
        norm += self.mean.astype(work)[None, :, None, None]
        norm *= self.band_scale.astype(work)[None, :, None, None]
        norm += self.band_offset.astype(work)[None, :, None, None]
        return norm


def coding_gain(cov: np.ndarray) -> float:
    """Geometric mean of the band variances over that of the KLT's eigenvalues: the KLT's
    gain over coding the bands one by one (high-rate theory; 1.0 = nothing to gain, and
    half of log2 of it is the bits saved per pixel)."""
    floor = 1e-12 * max(float(np.trace(cov)), 1e-300)
    eig = np.clip(np.linalg.eigvalsh(cov), floor, None)
    diag = np.clip(np.diag(cov), floor, None)
    return float(np.exp(np.mean(np.log(diag)) - np.mean(np.log(eig))))


def fit_klt(moments: Moments, band_min: np.ndarray, band_max: np.ndarray, bits: int) -> Klt | None:
    """The group's KLT, or None where it cannot help (constant bands, too few pixels)."""
    cov = moments.covariance()
    scale = np.asarray(band_max, dtype=np.float64) - np.asarray(band_min, dtype=np.float64)
    if cov is None or np.any(scale <= 0):
        return None
    norm_cov = cov / np.outer(scale, scale)
    try:
        eigval, eigvec = np.linalg.eigh(norm_cov)
    except np.linalg.LinAlgError:
        return None
    order = np.argsort(eigval)[::-1]
    matrix = eigvec[:, order]
    # sign convention: each component's largest weight positive (a stable manifest)
    signs = np.sign(matrix[np.argmax(np.abs(matrix), axis=0), np.arange(matrix.shape[1])])
    matrix = matrix * np.where(signs == 0, 1.0, signs)
    # the transform is applied in float32 anyway: storing its numbers at float32 precision
    # (9 significant digits, not 17) keeps the manifest of a small cube a few % smaller,
    # and encoder and decoder use exactly these values
    matrix = _short(matrix)
    mean = _short((moments.mean() - band_min) / scale)
    # components of any point of the band box [0, 1]^B minus the mean: a safe range even for
    # gap-filled pixels whose band combination never occurs in the valid data
    lo = np.minimum(-mean[:, None] * matrix, (1 - mean)[:, None] * matrix).sum(axis=0)
    hi = np.maximum(-mean[:, None] * matrix, (1 - mean)[:, None] * matrix).sum(axis=0)
    step = float((hi - lo).max()) / ((1 << bits) - 1)
    # widen the box by a float32 ulp so rounding in the float32 forward pass cannot clip
    lo = _short(lo - 1e-6)
    return Klt(
        band_offset=np.asarray(band_min, dtype=np.float64),
        band_scale=scale,
        mean=mean,
        matrix=matrix,
        comp_offset=lo,
        step=step,
    )


def _short(values: np.ndarray) -> np.ndarray:
    """float64 values with the fewest decimal digits that round to the same float32."""
    flat = [float(str(np.float32(v))) for v in np.ravel(values)]
    return np.array(flat, dtype=np.float64).reshape(np.shape(values))
