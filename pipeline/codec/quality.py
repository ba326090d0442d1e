"""What a group's streams give back: per-channel PSNR of the decoded result against the
source, over valid pixels, decoded exactly as a reader decodes it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.codec.codemap import CodeMap
from pipeline.codec.cube import iter_blocks
from pipeline.codec.cube import valid_mask as _valid_mask
from pipeline.codec.groupcoder import (
    CubeContext,
    psnr_from_mse,
    untile,
)
from pipeline.codec.memory import block_frames
from pipeline.codec.passes import READ_BLOCK, EncodedGroup
from pipeline.codec.pyav_engine import decode_frames
from pipeline.codec.settings import n_planes


def group_psnr(
    ctx: CubeContext, encoded: Sequence[EncodedGroup], indices: Sequence[int]
) -> dict[str, float]:
    """Worst channel PSNR of each encoded group against the source over valid pixels, every
    group compared in one pass over the source and decoded as a reader decodes it."""
    h, w = ctx.shape
    sse: dict[str, float] = {}
    count: dict[str, int] = {}
    decoders = {
        s.name: decode_frames(e.paths[s.name], n_planes(s.settings.pix_fmt), name=s.name)
        for e in encoded
        if e.kept
        for s in e.streams
    }
    codemap = CodeMap(
        {c.name: c for e in encoded for c in e.coder.channel_infos(e.streams)},
        {t.name: t for e in encoded if (t := e.coder.transform_info(e.streams))},
        {s.name: e.coder.quantisers[0].bits for e in encoded for s in e.streams},
    )
    channels = [c for e in encoded for c in e.group.channels]
    kept = {e.group.name: set(e.kept) for e in encoded}
    try:
        block_size = block_frames(h * w, READ_BLOCK)
        for block, values in iter_blocks(ctx.ds, ctx.layout, channels, indices, block_size):
            for e in encoded:
                rows = [i for i, idx in enumerate(block) if idx in kept[e.group.name]]
                if not rows:
                    continue
                decoded = {
                    s.name: np.stack(
                        [untile(next(decoders[s.name])[1], s.tiles, h)[:, :h, :w] for _ in rows]
                    )
                    for s in e.streams
                }
                for ch in e.group.channels:
                    vals = values[ch.name][rows]
                    valid = _valid_mask(vals, ctx.layout.nodata[ch.variable])
                    rec = codemap.values(ch.name, decoded, ctx.ds[ch.variable].dtype)
                    diff = rec[valid].astype(np.float64) - vals[valid].astype(np.float64)
                    sse[ch.name] = sse.get(ch.name, 0.0) + float(np.dot(diff, diff))
                    count[ch.name] = count.get(ch.name, 0) + int(valid.sum())
    finally:
        for gen in decoders.values():
            gen.close()
    out = {}
    for e in encoded:
        worst = float("inf")
        for ch in e.group.channels:
            st = ctx.stats[ch.name]
            if count.get(ch.name):
                mse = sse[ch.name] / count[ch.name]
                e.psnr[ch.name] = psnr_from_mse(mse, st.vmax - st.vmin)
                worst = min(worst, e.psnr[ch.name])
        out[e.group.name] = worst
    return out
