"""Reading an input Dataset as a cube: which dims are time/y/x, which variables are image
stacks, how they split into channels (one 2-D plane per time step), and what is valid."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from pipeline.codec.klt import Moments
from pipeline.codec.manifest import Role
from pipeline.errors import InvalidCubeError

TIME_NAMES = ("time", "t", "date")
Y_NAMES = ("y", "lat", "latitude", "rows", "row")
X_NAMES = ("x", "lon", "longitude", "cols", "col")
FLAG_ATTRS = ("flag_values", "flag_meanings", "flag_masks")
NODATA_ATTRS = ("_FillValue", "nodata", "missing_value")


@dataclass(frozen=True)
class Channel:
    name: str
    variable: str
    band_index: int | None
    role: Role


@dataclass(frozen=True)
class ChannelStats:
    """Range over valid (finite) pixels: exact Python ints for integer bands, so 64-bit
    values beyond 2^53 keep their offset. Infinite pixels are invalid for coding and counted
    so the mask stream can restore them."""

    vmin: float | int
    vmax: float | int
    n_valid: int
    n_invalid: int
    dtype: str = "float64"
    n_posinf: int = 0
    n_neginf: int = 0

    @property
    def klt_safe(self) -> bool:
        """A KLT works in float64: not for ranges that overflow it or 64-bit integers it
        cannot hold exactly."""
        if not np.isfinite(float(self.vmax) - float(self.vmin)):
            return False
        return max(abs(self.vmin), abs(self.vmax)) <= 2**53


@dataclass
class CubeLayout:
    time_dim: str
    y_dim: str
    x_dim: str
    image_vars: list[str]
    aux_vars: list[str]
    roles: dict[str, Role]
    band_dims: dict[str, str | None]
    nodata: dict[str, float | int | None]
    channels: list[Channel] = field(default_factory=list)

    def channels_of(self, variable: str) -> list[Channel]:
        return [c for c in self.channels if c.variable == variable]


def _find_dim(ds: xr.Dataset, names: tuple[str, ...], what: str, override: str | None) -> str:
    if override:
        if override not in ds.dims:
            raise InvalidCubeError(f"dataset has no dimension {override!r} (given as {what} dim)")
        return override
    for n in names:
        if n in ds.dims:
            return n
    raise InvalidCubeError(
        f"dataset has no {what} dimension: expected one of {', '.join(names)}; "
        f"found dims {', '.join(map(str, ds.dims)) or 'none'}"
    )


def _guess_role(da: xr.DataArray) -> Role:
    if da.dtype == bool:
        return "categorical"
    if any(a in da.attrs for a in FLAG_ATTRS):
        return "categorical"
    return "continuous"


def _channel_label(da: xr.DataArray, band_dim: str, i: int) -> str:
    if band_dim in da.coords:
        label = da[band_dim].values[i]
        return f"{da.name}[{label}]" if np.asarray(label).dtype.kind not in "US" else str(label)
    return f"{da.name}[{i}]"


def _role(name: str, da: xr.DataArray, roles: Mapping[str, str]) -> Role:
    """The variable's role, given or guessed, checked against its dtype."""
    if da.dtype.kind not in "biuf":
        raise InvalidCubeError(
            f"variable {name!r} has unsupported dtype {da.dtype}: expected bool, integer or float"
        )
    role: Role = roles[name] if name in roles else _guess_role(da)  # type: ignore[assignment]
    if role not in ("continuous", "categorical"):
        raise InvalidCubeError(f"variable {name!r}: unknown role {role!r}")
    if role == "categorical" and da.dtype.kind == "f":
        raise InvalidCubeError(
            f"variable {name!r} is categorical but has float dtype {da.dtype}: "
            "cast class labels to an integer type"
        )
    return role


def analyse(
    ds: xr.Dataset,
    roles: Mapping[str, str] | None = None,
    nodata: Mapping[str, float | int] | None = None,
    time_dim: str | None = None,
    y_dim: str | None = None,
    x_dim: str | None = None,
) -> CubeLayout:
    """Classify the dataset's variables; raise InvalidCubeError for anything we cannot encode."""
    roles = dict(roles or {})
    nodata = dict(nodata or {})
    t = _find_dim(ds, TIME_NAMES, "time", time_dim)
    y = _find_dim(ds, Y_NAMES, "y", y_dim)
    x = _find_dim(ds, X_NAMES, "x", x_dim)
    if ds.sizes[t] == 0:
        raise InvalidCubeError(f"dataset has zero frames along {t!r}")
    if ds.sizes[y] == 0 or ds.sizes[x] == 0:
        raise InvalidCubeError(f"dataset has an empty frame ({ds.sizes[y]} x {ds.sizes[x]})")
    unknown = set(roles) - set(map(str, ds.data_vars))
    if unknown:
        raise InvalidCubeError(f"roles given for unknown variables: {', '.join(sorted(unknown))}")

    layout = CubeLayout(t, y, x, [], [], {}, {}, {})
    seen_names: set[str] = set()
    for name in map(str, ds.data_vars):
        da = ds[name]
        if roles.get(name) == "metadata":
            layout.aux_vars.append(name)
            continue
        if not {t, y, x} <= set(map(str, da.dims)) or da.ndim not in (3, 4):
            layout.aux_vars.append(name)
            continue
        role = _role(name, da, roles)
        band_dim = next((str(d) for d in da.dims if d not in (t, y, x)), None)
        layout.image_vars.append(name)
        layout.roles[name] = role
        layout.band_dims[name] = band_dim
        nd = nodata.get(name)
        if nd is None and da.dtype.kind in "iu" and role == "continuous":
            nd = next((da.attrs[a] for a in NODATA_ATTRS if a in da.attrs), None)
        layout.nodata[name] = nd
        n_bands = da.sizes[band_dim] if band_dim else 1
        for i in range(n_bands):
            label = _channel_label(da, band_dim, i) if band_dim else name
            if label in seen_names:
                label = f"{name}[{label}]"
            seen_names.add(label)
            layout.channels.append(Channel(label, name, i if band_dim else None, role))
    if not layout.image_vars:
        raise InvalidCubeError(
            f"dataset has no image variable with dims ({t}, {y}, {x}) or ({t}, band, {y}, {x})"
        )
    return layout


def channel_array(ds: xr.Dataset, layout: CubeLayout, ch: Channel) -> xr.DataArray:
    """The channel as a lazily indexed (time, y, x) DataArray."""
    da = ds[ch.variable]
    band_dim = layout.band_dims[ch.variable]
    if band_dim is not None:
        da = da.isel({band_dim: ch.band_index})
    return da.transpose(layout.time_dim, layout.y_dim, layout.x_dim)


def valid_mask(values: np.ndarray, nodata: float | int | None) -> np.ndarray:
    if values.dtype.kind == "f":
        valid = np.isfinite(values)
        if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
            valid &= values != nodata
        return valid
    if nodata is None:
        return np.ones(values.shape, dtype=bool)
    return values != nodata


Block = dict[str, np.ndarray]  # channel name -> (frames, H, W) values


def read_block(
    ds: xr.Dataset, layout: CubeLayout, channels: Sequence[Channel], indices: Sequence[int]
) -> Block:
    """Values of several channels over some time steps, each variable read once.

    A (time, band, y, x) variable is read for all its wanted bands in one request, so a
    source that stores bands together (one GeoTIFF per day) is opened once per frame.
    """
    lo, hi = indices[0], indices[-1] + 1
    tsel: slice | list[int] = slice(lo, hi) if hi - lo == len(indices) else list(indices)
    out: Block = {}
    for variable in dict.fromkeys(c.variable for c in channels):
        wanted = [c for c in channels if c.variable == variable]
        band_dim = layout.band_dims[variable]
        da = ds[variable].isel({layout.time_dim: tsel})
        if band_dim is None:
            out[wanted[0].name] = np.asarray(
                da.transpose(layout.time_dim, layout.y_dim, layout.x_dim).values
            )
            continue
        bands = [c.band_index for c in wanted]
        da = da.isel({band_dim: bands}).transpose(
            band_dim, layout.time_dim, layout.y_dim, layout.x_dim
        )
        values = np.asarray(da.values)
        for c, v in zip(wanted, values, strict=True):
            out[c.name] = v
    return out


def iter_blocks(
    ds: xr.Dataset,
    layout: CubeLayout,
    channels: Sequence[Channel],
    indices: Sequence[int],
    block: int,
    ahead: int = 1,
) -> Iterator[tuple[Sequence[int], Block]]:
    """Consecutive blocks of ``indices`` with their values.

    Up to ``ahead`` later blocks are read in background threads while the caller works on
    this one (GeoTIFF and zarr reads release the GIL), so reading overlaps encoding; with
    ``ahead=0`` everything happens in the calling thread.
    """
    chunks = [indices[i : i + block] for i in range(0, len(indices), block)]
    if ahead < 1 or len(chunks) < 2:
        for c in chunks:
            yield c, read_block(ds, layout, channels, c)
        return
    with ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="cubecast-read") as pool:
        pending = deque(
            pool.submit(read_block, ds, layout, channels, c) for c in chunks[: ahead + 1]
        )
        for i, c in enumerate(chunks):
            values = pending.popleft().result()
            if i + ahead + 1 < len(chunks):
                pending.append(pool.submit(read_block, ds, layout, channels, chunks[i + ahead + 1]))
            yield c, values


def cube_stats(
    ds: xr.Dataset,
    layout: CubeLayout,
    block: int = 2,
    readers: int = 2,
    moments: Mapping[tuple[str, ...], Moments] | None = None,
) -> dict[str, ChannelStats]:
    """Min/max over valid pixels of every channel, in one streaming pass over time.

    Nothing else runs during this pass, so ``readers`` threads decompress blocks in
    parallel (the pass costs one read of the cube, before the encoders can start).
    ``moments`` (channel names -> running sums) are filled in the same pass, over the
    pixels valid in all of a group's channels: a KLT basis costs no extra read.
    """
    acc = {c.name: [np.inf, -np.inf, 0, 0, 0, 0] for c in layout.channels}
    indices = range(ds.sizes[layout.time_dim])
    by_name = {c.name: c for c in layout.channels}
    for _, values in iter_blocks(ds, layout, layout.channels, indices, block, ahead=readers):
        for names, mom in (moments or {}).items():
            valid = None
            for n in names:
                v = valid_mask(values[n], layout.nodata[by_name[n].variable])
                if not v.all():
                    valid = v if valid is None else valid & v
            mom.add([values[n] for n in names], valid)
        for ch in layout.channels:
            _accumulate(acc[ch.name], values[ch.name], layout.nodata[ch.variable])
    out = {}
    for ch in layout.channels:
        vmin, vmax, n_valid, n_invalid, n_posinf, n_neginf = acc[ch.name]
        dtype = ds[ch.variable].dtype
        exact = int if dtype.kind in "biu" else float
        if n_valid == 0:
            if ch.role != "continuous":
                raise InvalidCubeError(
                    f"variable {ch.variable!r} channel {ch.name!r} has no valid pixels (all "
                    "nodata): a class layer needs its classes"
                )
            # nothing to code: the mask stream restores every pixel (NaN, nodata or +-inf)
            out[ch.name] = ChannelStats(
                exact(0), exact(0), 0, n_invalid, str(dtype), n_posinf, n_neginf
            )
            continue
        _check_declared_range(ds[ch.variable], ch, vmin, vmax)
        out[ch.name] = ChannelStats(
            exact(vmin), exact(vmax), n_valid, n_invalid, str(dtype), n_posinf, n_neginf
        )
    return out


def _accumulate(a: list, vals: np.ndarray, nodata: float | int | None) -> None:
    """Add one block of a channel to its running [min, max, valid, invalid, +inf, -inf]."""
    valid = valid_mask(vals, nodata)
    nv = int(np.count_nonzero(valid))
    a[2] += nv
    a[3] += valid.size - nv
    if nv == valid.size:
        a[0], a[1] = min(a[0], vals.min().item()), max(a[1], vals.max().item())
        return
    if nv:
        v = vals[valid]
        a[0], a[1] = min(a[0], v.min().item()), max(a[1], v.max().item())
    if vals.dtype.kind == "f":
        a[4] += int(np.count_nonzero(np.isposinf(vals)))
        a[5] += int(np.count_nonzero(np.isneginf(vals)))


def _check_declared_range(da: xr.DataArray, ch: Channel, vmin: float, vmax: float) -> None:
    lo = hi = None
    if "valid_range" in da.attrs:
        lo, hi = (float(v) for v in np.asarray(da.attrs["valid_range"]).ravel()[:2])
    lo = float(da.attrs["valid_min"]) if "valid_min" in da.attrs else lo
    hi = float(da.attrs["valid_max"]) if "valid_max" in da.attrs else hi
    if (lo is not None and vmin < lo) or (hi is not None and vmax > hi):
        raise InvalidCubeError(
            f"variable {ch.variable!r} channel {ch.name!r} has values [{vmin:g}, {vmax:g}] "
            f"outside its declared valid range [{lo}, {hi}]"
        )
