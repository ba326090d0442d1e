"""Synthetic Earth-observation content: land surfaces with texture, seasons and moving clouds.

Used by the synthetic dataset twins, the demo and the benchmarks; deterministic per seed.
"""

from __future__ import annotations

import numpy as np

# Mean surface reflectance per land-cover class for S2 bands B02 B03 B04 B05 B06 B07 B8A.
S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B8A")
_CLASS_REFLECTANCE = np.array(
    [
        [0.10, 0.11, 0.12, 0.14, 0.16, 0.17, 0.18],  # built-up
        [0.04, 0.07, 0.05, 0.10, 0.25, 0.30, 0.35],  # cropland (seasonal)
        [0.02, 0.04, 0.02, 0.06, 0.20, 0.25, 0.28],  # forest
        [0.03, 0.05, 0.04, 0.06, 0.10, 0.12, 0.14],  # wetland
        [0.12, 0.15, 0.18, 0.20, 0.22, 0.23, 0.25],  # bare soil
        [0.03, 0.04, 0.02, 0.02, 0.01, 0.01, 0.01],  # water
    ]
)


def fractal_noise(
    shape: tuple[int, int], rng: np.random.Generator, beta: float = 2.2
) -> np.ndarray:
    """Smooth random field with a 1/f^beta spectrum, scaled to [0, 1]."""
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy**2 + fx**2)
    f[0, 0] = 1.0
    spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f ** (beta / 2)
    field = np.fft.irfft2(spec, s=(h, w))
    field -= field.min()
    return field / (field.max() or 1.0)


def land_cover(shape: tuple[int, int], rng: np.random.Generator, n_classes: int = 6) -> np.ndarray:
    """Persistent class map: thresholds of a smooth field give contiguous patches."""
    field = fractal_noise(shape, rng, beta=3.0)
    edges = np.quantile(field, np.linspace(0, 1, n_classes + 1)[1:-1])
    return np.digitize(field, edges).astype(np.uint8)


class CloudField:
    """Clouds and their shadows, one frame at a time: blobs drifting with the wind.

    Frame-wise so full-size twins (1024 x 1024 x 730 days) never hold the whole stack.
    """

    def __init__(self, shape: tuple[int, int], rng: np.random.Generator, cover: float = 0.3):
        h, w = shape
        self.shape = shape
        self.cover = cover
        self.rng = rng
        self.big = fractal_noise((2 * h, 2 * w), rng, beta=2.6)
        self.vy, self.vx = rng.integers(-3, 4, size=2)

    def frame(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.shape
        clouds = np.zeros((h, w), dtype=bool)
        shadows = np.zeros_like(clouds)
        frame_cover = self.cover * self.rng.choice([0.0, 0.5, 1.0, 2.0], p=[0.4, 0.2, 0.25, 0.15])
        if frame_cover <= 0:
            return clouds, shadows
        oy, ox = (t * self.vy) % h, (t * self.vx) % w
        window = self.big[oy : oy + h, ox : ox + w]
        thr = np.quantile(window, 1 - min(frame_cover, 1.0))
        clouds = window > thr
        shadows = np.roll(clouds, (h // 20 + 1, w // 20 + 1), axis=(0, 1)) & ~clouds
        return clouds, shadows


def cloud_masks(
    n_frames: int, shape: tuple[int, int], rng: np.random.Generator, cover: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """(clouds, shadows) as bool (T, H, W)."""
    field = CloudField(shape, rng, cover)
    clouds = np.zeros((n_frames, *shape), dtype=bool)
    shadows = np.zeros_like(clouds)
    for t in range(n_frames):
        clouds[t], shadows[t] = field.frame(t)
    return clouds, shadows


class Surface:
    """A textured land surface whose vegetation follows the seasons, one frame at a time."""

    def __init__(
        self,
        shape: tuple[int, int],
        seed: int = 0,
        bands: tuple[int, ...] | int = 7,
        noise: float = 0.001,
    ) -> None:
        idx = list(range(bands)) if isinstance(bands, int) else list(bands)
        self.rng = np.random.default_rng(seed)
        self.noise = noise
        self.classes = land_cover(shape, self.rng)
        texture = fractal_noise(shape, self.rng, beta=1.8) - 0.5
        table = _CLASS_REFLECTANCE[:, idx]
        self.base = table[self.classes] * (1 + 0.15 * texture[..., None])  # (H, W, bands)
        self.veg = np.isin(self.classes, (1, 2)).astype(np.float32)[..., None]
        self.nir_gain = np.linspace(-0.3, 1.0, 7)[idx][None, None, :]

    def frame(self, doy: float) -> np.ndarray:
        """(bands, H, W) float32 reflectance in [0, 1] on day-of-year ``doy``."""
        season = np.sin(2 * np.pi * (doy - 100) / 365.0)
        frame = self.base * (1 + 0.25 * season * self.veg * self.nir_gain)
        frame += self.rng.normal(0, self.noise, frame.shape)
        return np.clip(np.moveaxis(frame, -1, 0), 0, 1).astype(np.float32)


def reflectance_cube(
    n_frames: int,
    shape: tuple[int, int],
    seed: int = 0,
    n_bands: int = 7,
    doy: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Surface reflectance (T, bands, H, W) float32 in [0, 1] and its land-cover map."""
    surface = Surface(shape, seed, n_bands)
    if doy is None:
        doy = np.linspace(0, 365 * n_frames / 73, n_frames)
    out = np.empty((n_frames, n_bands, *shape), dtype=np.float32)
    for t in range(n_frames):
        out[t] = surface.frame(float(doy[t]))
    return out, surface.classes
