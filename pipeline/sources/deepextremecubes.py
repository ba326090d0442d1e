"""DeepExtremeCubes: one zarr store per minicube, ``mc_<lon>_<lat>_<version>_<date>_<n>.zarr``.

Sentinel-2 L2A bands are int16 with ``scale_factor`` 0.0001 and ``_FillValue`` -9999, so they
open as float reflectance with NaN gaps; ``SCL`` and ``cloudmask_en`` are class layers; ERA5
series, the static ``lccs_class`` / ``cop_dem`` and ``events`` (own daily axis) are not image
stacks and travel as lossless metadata.
"""

from __future__ import annotations

import xarray as xr

from pipeline.errors import SourceError
from pipeline.recipe import SourceSpec
from pipeline.sources.mirror import Mirror

DEFAULT_PATTERN = "mc_*.zarr"


class DeepExtremeCubes:
    def _stores(self, mirror: Mirror, spec: SourceSpec) -> dict[str, str]:
        pattern = spec.pattern or DEFAULT_PATTERN
        stores = {}
        for rel in mirror.list(f"**/{pattern}/.zattrs"):
            store = rel.rsplit("/", 1)[0]
            stores[store.rsplit("/", 1)[-1].removesuffix(".zarr")] = store
        return stores

    def list_ids(self, mirror: Mirror, spec: SourceSpec) -> list[str]:
        return sorted(self._stores(mirror, spec))

    def load(self, mirror: Mirror, spec: SourceSpec, cube_id: str) -> xr.Dataset:
        stores = self._stores(mirror, spec)
        if cube_id not in stores:
            raise SourceError(f"{mirror.location}: no minicube {cube_id!r}")
        path = mirror.fetch_tree(stores[cube_id])
        try:
            ds = xr.open_zarr(path, chunks=None, decode_coords="all", consolidated=None)
        except Exception as exc:  # zarr/xarray raise many types for a broken store
            raise SourceError(f"{path}: not a readable zarr minicube ({exc})") from exc
        if "time" not in ds.dims:
            raise SourceError(f"{path}: minicube has no 'time' dimension")
        ds.attrs.setdefault("id", cube_id)
        return ds
