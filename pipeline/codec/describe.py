"""The manifest entries of an encoded cube: its streams, channels, KLT transforms,
variables and coordinates, from what the encode pass wrote."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import xarray as xr

from pipeline.codec import jsonvalues, rawcarrier
from pipeline.codec.chunkcodecs import chunk_codec
from pipeline.codec.encoded import SpoolStore, file_sha256, sha256
from pipeline.codec.groupcoder import (
    CubeContext,
)
from pipeline.codec.manifest import (
    AuxInfo,
    ChannelInfo,
    CoordInfo,
    StreamInfo,
    TransformInfo,
    VariableInfo,
)
from pipeline.codec.netcdf import dataset_to_bytes, packing_encoding
from pipeline.codec.passes import EncodedGroup
from pipeline.codec.planning import stream_file
from pipeline.codec.videocodecs import X265_CODEC, get_codec
from pipeline.errors import InvalidCubeError

AUX_FILE = "aux.nc"


def _runs(kept: Sequence[int], n_frames: int) -> list[tuple[int, int]] | None:
    """[start, stop) runs of the stored frames; None when every frame is stored."""
    if len(kept) == n_frames:
        return None
    runs: list[tuple[int, int]] = []
    for i in kept:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def stream_infos(
    encoded: Mapping[str, EncodedGroup], store: SpoolStore, n_frames: int, carrier: str = "auto"
) -> list[StreamInfo]:
    """Each stream's entry, its file final: a video stream is rewritten in the raw carrier
    where that is smaller (``carrier`` "auto"; see pipeline.codec.rawcarrier)."""
    out = []
    for enc in encoded.values():
        g, settings = enc.group, enc.settings
        chunked = chunk_codec(settings.codec) is not None
        lossy = not chunked and not get_codec(settings.codec).lossless_only
        for s in enc.streams:
            path, file = enc.paths[s.name], stream_file(s)
            if path.name != file:
                path = path.replace(store.path / file)
                enc.paths[s.name] = path
            if g.kind == "mask":
                bits = 1
                planes = [c.name for c in g.mask_of] + [f"{c.name}:{sign}" for c, sign in g.inf_of]
            elif g.words:
                bits, planes = 16, [f"{g.channels[0].name}.w{p}" for p in s.planes]
            else:
                planes = (
                    [c.name for c in g.channels]
                    if enc.coder.klt is None
                    else [f"{g.name}.pc{k}" for k in range(enc.coder.klt.n_components)]
                )
                planes = [planes[p] for p in s.planes]
                bits = 8 if s.settings.pix_fmt == "gray" else enc.coder.quantisers[0].bits
            raw = carrier == "auto" and rawcarrier.carries(s.settings.codec)
            raw = raw and rawcarrier.to_raw(path, s.settings.codec)
            out.append(
                StreamInfo(
                    name=s.name,
                    file=file,
                    kind=g.kind,
                    codec=s.settings.codec,
                    pix_fmt=s.settings.pix_fmt,
                    planes=planes,
                    bits=bits,
                    lossless=s.settings.lossless,
                    crf=s.settings.crf if lossy and not s.settings.lossless else None,
                    gain=round(s.settings.gain, 6) if lossy and not s.settings.lossless else 1.0,
                    preset=s.settings.preset if lossy else None,
                    x265_params=(
                        s.settings.x265_params if s.settings.codec == X265_CODEC.name else ""
                    ),
                    keyint=s.settings.keyint,
                    backend="zstd" if chunked else s.settings.engine,
                    nbytes=path.stat().st_size,
                    sha256=file_sha256(path),
                    chunk_offsets=enc.offsets.get(s.name),
                    tiles=s.tiles,
                    frames=_runs(enc.kept, n_frames) if g.kind == "continuous" else None,
                    carrier=rawcarrier.CARRIER if raw else rawcarrier.MATROSKA,
                )
            )
    return out


def channel_infos(
    ctx: CubeContext, encoded: Mapping[str, EncodedGroup]
) -> tuple[list[ChannelInfo], list[TransformInfo]]:
    infos: dict[str, ChannelInfo] = {}
    transforms = []
    masks = {}
    infs: dict[tuple[str, str], int] = {}
    for enc in encoded.values():
        if enc.group.kind == "mask":
            s = enc.streams[0]
            masks |= {c.name: (s.name, b) for b, c in enumerate(enc.group.mask_of)}
            for b, (c, sign) in enumerate(enc.group.inf_of, start=len(enc.group.mask_of)):
                infs[(c.name, sign)] = b
            continue
        infos |= {c.name: c for c in enc.coder.channel_infos(enc.streams)}
        t = enc.coder.transform_info(enc.streams)
        if t is not None:
            transforms.append(t)
    floors = {
        c.name: enc.group.psnr_target
        for enc in encoded.values()
        if enc.group.psnr_target is not None
        for c in enc.group.channels
    }
    channels = []
    for ch in ctx.layout.channels:
        mstream, mbit = masks.get(ch.name, (None, None))
        update = {
            "mask_stream": mstream,
            "mask_bit": mbit,
            "posinf_bit": infs.get((ch.name, "+inf")),
            "neginf_bit": infs.get((ch.name, "-inf")),
            "psnr": _measured_psnr(encoded.values(), ch.name),
            "psnr_floor": floors.get(ch.name),
        }
        # a channel with no valid pixel is in no group: the mask restores all of it
        info = infos.get(ch.name) or ChannelInfo(
            name=ch.name, variable=ch.variable, band_index=ch.band_index
        )
        channels.append(info.model_copy(update=update))
    return channels, transforms


def _measured_psnr(encoded: Iterable[EncodedGroup], channel: str) -> float | None:
    """The PSNR the encoder measured for a channel; None where it measured none, or the
    band came back exact (infinite PSNR, which JSON cannot hold)."""
    psnr = next((e.psnr[channel] for e in encoded if channel in e.psnr), None)
    return psnr if psnr is not None and math.isfinite(psnr) else None


def _coord_info(name: str, da: xr.DataArray) -> CoordInfo:
    if not isinstance(da.dtype, np.dtype):  # a pandas extension type (tz-aware times, ...)
        raise InvalidCubeError(
            f"coordinate {name!r} has dtype {da.dtype}, which cubecast cannot store: convert "
            "it to a numpy dtype (timezone-aware times: to naive UTC datetime64)"
        )
    problem = jsonvalues.storable(np.asarray(da.values))
    if problem:
        raise InvalidCubeError(f"coordinate {name!r} cannot be stored: {problem}")
    return CoordInfo(
        dims=[str(d) for d in da.dims],
        dtype=str(da.dtype),
        values=jsonvalues.to_json(np.asarray(da.values)),
        attrs=jsonvalues.dict_to_json(da.attrs),
        encoding=jsonvalues.dict_to_json(packing_encoding(da.encoding)),
    )


def variable_infos(ds: xr.Dataset, ctx: CubeContext) -> list[VariableInfo]:
    layout = ctx.layout
    out = []
    for name in layout.image_vars:
        da = ds[name]
        out.append(
            VariableInfo(
                name=name,
                dims=[str(d) for d in da.dims],
                dtype=str(da.dtype),
                role=layout.roles[name],
                band_dim=layout.band_dims[name],
                channels=[c.name for c in layout.channels_of(name)],
                nodata=jsonvalues.to_json(layout.nodata[name]),
                attrs=jsonvalues.dict_to_json(da.attrs),
                encoding=jsonvalues.dict_to_json(packing_encoding(da.encoding)),
            )
        )
    return out


def coords_and_aux(
    ds: xr.Dataset, ctx: CubeContext, store: SpoolStore
) -> tuple[dict[str, CoordInfo], AuxInfo | None]:
    """1-D coordinates go into the manifest (compactly); other variables and large
    multi-dimensional coordinates into ``aux.nc``, written only when there are any."""
    coords = {}
    aux_coords = []
    for name, c in ds.coords.items():
        if c.ndim <= 1 and (c.ndim == 0 or c.dims[0] == name or c.size < 100_000):
            coords[str(name)] = _coord_info(str(name), c)
        else:
            aux_coords.append(str(name))
    aux_vars = ctx.layout.aux_vars
    if not (aux_vars or aux_coords):
        return coords, None
    aux_ds = ds[aux_vars].reset_coords(drop=True)
    aux_ds = aux_ds.assign_coords({n: ds.coords[n] for n in aux_coords})
    aux_ds.attrs = {}
    for v in aux_ds.variables.values():
        v.encoding = {}
        v.attrs = {}  # kept in the manifest (any JSON value: dicts too), restored on decode
    blob = dataset_to_bytes(aux_ds)
    store.write(AUX_FILE, blob)
    names = aux_vars + aux_coords
    return coords, AuxInfo(
        file=AUX_FILE,
        variables=names,
        nbytes=len(blob),
        sha256=sha256(blob),
        encodings={n: jsonvalues.dict_to_json(packing_encoding(ds[n].encoding)) for n in names},
        attrs={n: jsonvalues.dict_to_json(ds[n].attrs) for n in names},
    )
