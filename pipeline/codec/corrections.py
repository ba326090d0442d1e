"""The encoder's side of error-bounded bands: decode the video streams just written through
the reader's own decode path, and write the correction layer that brings every valid value
within its band's bound (:mod:`pipeline.codec.errorbound`).

One way: the manifest of the video pass goes in, the same manifest with a correction
stream and each bounded channel's bound, step and reached error comes out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from pipeline.codec import errorbound
from pipeline.codec.cube import Channel, CubeLayout, channel_array, read_block, valid_mask
from pipeline.codec.decode import iter_decode
from pipeline.codec.encoded import EncodedCube, SpoolStore, file_sha256
from pipeline.codec.manifest import CORRECTION_VERSION, Manifest, StreamInfo
from pipeline.codec.streamchunks import CHUNK
from pipeline.errors import InvalidCubeError

STREAM = "corrections"
WINDOW_PX = 1 << 22


def _stream_name(m: Manifest) -> str:
    taken = {s.name for s in m.streams}
    name, i = STREAM, 1
    while name in taken:
        i += 1
        name = f"{STREAM}{i}"
    return name


def add_corrections(
    ds: object,
    layout: CubeLayout,
    manifest: Manifest,
    store: SpoolStore,
    bounds: Mapping[str, float],
    keyint: int,
) -> Manifest:
    """``manifest`` with a correction layer for the channels of ``bounds`` (channel name ->
    absolute bound), written into ``store``. Channels stored bit for bit, or with no valid
    pixel, are exact already: they get their bound and reached error 0 but no codes."""
    assert isinstance(ds, xr.Dataset)
    m = manifest
    # every quantised band gets codes (x265's "lossless" still rounds a float band to its
    # 12-bit codes); bands stored bit for bit (lossless words) and bands with no valid
    # pixel (no stream) are exact already
    lossy = [
        c
        for c in layout.channels
        if c.name in bounds
        and not m.channel(c.name).words
        and (m.channel(c.name).stream is not None or m.channel(c.name).transform is not None)
    ]
    reached = dict.fromkeys(bounds, 0.0)
    if not lossy:
        return _with_bounds(m, bounds, reached, None, {})
    name = _stream_name(m)
    file = f"{name}.{errorbound.SUFFIX}"
    path = store.path / file
    chunk = max(1, min(keyint, CHUNK))
    steps = {c.name: _step(m, c.name, c.variable, bounds[c.name]) for c in lossy}
    writer = errorbound.CorrectionWriter(path, chunk)
    video = EncodedCube(m, store, source=str(store.path))
    try:
        _write_codes(ds, layout, video, lossy, (steps, bounds, reached), writer, chunk)
    finally:
        writer.close()
    stream = StreamInfo(
        name=name,
        file=file,
        kind="correction",
        codec=errorbound.CODEC,
        pix_fmt=errorbound.PIX_FMT,
        planes=[c.name for c in lossy],
        bits=16,
        lossless=True,
        keyint=chunk,
        backend="zstd",
        nbytes=path.stat().st_size,
        sha256=file_sha256(path),
        chunk_offsets=writer.offsets,
    )
    where = {c.name: (name, i, steps[c.name]) for i, c in enumerate(lossy)}
    return _with_bounds(m, bounds, reached, stream, where)


def _write_codes(
    ds: xr.Dataset,
    layout: CubeLayout,
    video: EncodedCube,
    lossy: Sequence[Channel],
    per_channel: tuple[Mapping[str, float], Mapping[str, float], dict[str, float]],
    writer: errorbound.CorrectionWriter,
    chunk: int,
) -> None:
    """Decode ``video`` as a reader does and write each frame's correction codes; the
    largest error left per channel goes into ``reached``. A few Mpx per decode window (the
    layer's chunks are buffered by the writer): a 1024 x 1024 cube's float64 work arrays
    stay a few tens of MiB. ``per_channel``: each channel's step, bound and reached error."""
    steps, bounds, reached = per_channel
    m = video.manifest
    h, w = m.frame_shape
    window = max(1, min(chunk, WINDOW_PX // max(1, h * w * len(lossy))))
    variables = list(dict.fromkeys(c.variable for c in lossy))
    t0 = 0
    for block in iter_decode(video, variables=variables, window=window):
        n = block.sizes[m.time_dim]
        original = read_block(ds, layout, list(lossy), list(range(t0, t0 + n)))
        planes = []
        for c in lossy:
            x = original[c.name]
            dec = np.asarray(channel_array(block, layout, c).values)
            valid = valid_mask(x, layout.nodata[c.variable])
            k, got = errorbound.correction_codes(
                x, dec, valid, steps[c.name], bounds[c.name], c.name
            )
            reached[c.name] = max(reached[c.name], got)
            planes.append(k)
        for frame in np.stack(planes, axis=1):
            writer.write(frame)
        t0 += n
    if t0 != m.n_frames:
        raise InvalidCubeError(f"corrections: decoded {t0} of {m.n_frames} frames")


def _step(m: Manifest, channel: str, variable: str, bound: float) -> float:
    c = m.channel(channel)
    magnitude = max(abs(float(c.valid_min or 0.0)), abs(float(c.valid_max or 0.0)))
    return errorbound.step_of(bound, np.dtype(m.variable(variable).dtype), magnitude)


def _with_bounds(
    m: Manifest,
    bounds: Mapping[str, float],
    reached: Mapping[str, float],
    stream: StreamInfo | None,
    where: Mapping[str, tuple[str, int, float]],
) -> Manifest:
    channels = []
    for c in m.channels:
        if c.name in bounds:
            update: dict[str, object] = {
                "max_error": float(bounds[c.name]),
                "max_error_reached": float(reached[c.name]),
            }
            if c.name in where:
                s, plane, step = where[c.name]
                update |= {"correction_stream": s, "correction_plane": plane}
                update["correction_step"] = step
            c = c.model_copy(update=update)
        channels.append(c)
    streams = m.streams + ([stream] if stream is not None else [])
    return m.model_copy(
        update={
            "channels": channels,
            "streams": streams,
            "version": max(m.version, CORRECTION_VERSION),  # raw streams need a later one
        }
    )
