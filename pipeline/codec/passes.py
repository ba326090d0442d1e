"""Writing groups' streams: one pass over the source feeds every group's encoders.

Each block of frames is read once, quantised per group and handed to the writers; an encoder
that gives up marks its group failed so the caller can pick another codec."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

from tqdm.auto import tqdm

from pipeline.codec.chunkcodecs import chunk_codec
from pipeline.codec.cube import Block, iter_blocks
from pipeline.codec.engines import open_writer
from pipeline.codec.ffmpeg_engine import EncoderFailed
from pipeline.codec.groupcoder import (
    CubeContext,
    GroupCoder,
    stream_frame,
    stream_size,
)
from pipeline.codec.memory import block_frames, release_free_memory
from pipeline.codec.planning import (
    AUTO,
    EncodeOptions,
    GroupPlan,
    StreamPlan,
    stream_file,
)
from pipeline.codec.settings import VideoSettings
from pipeline.codec.videocodecs import X265_CODEC, get_codec
from pipeline.errors import InvalidCubeError

READ_BLOCK = 2
LARGE_FRAME = 1 << 20  # pixels
LARGE_FRAME_LOOKAHEAD = 10


def bounded_lookahead(settings: VideoSettings, frame_pixels: int) -> VideoSettings:
    """A shorter lookahead for frames of a megapixel and more, unless set explicitly.

    Encoders keep every lookahead frame in full. x265 at 1024 x 1024 x 3 planes: medium's
    20 frames cost about 240 MB more than 10 (0.7 % smaller, 0.08 dB lower on a
    DynamicEarthNet twin). libaom's default 35 frames took 2.4 GB on four tiled 1024 x 1024
    bands, measured.
    """
    if frame_pixels < LARGE_FRAME or settings.lookahead is not None:
        return settings
    return replace(settings, lookahead=LARGE_FRAME_LOOKAHEAD)


@dataclass
class EncodedGroup:
    """One group as written: its settings, streams and files, and the frames it kept."""

    group: GroupPlan
    settings: VideoSettings
    coder: GroupCoder
    streams: list[StreamPlan]
    paths: dict[str, Path]
    offsets: dict[str, list[int] | None]
    kept: list[int]
    sizes: dict[str, tuple[int, int]]  # each video stream's frame size (none when chunked)
    failed: str | None = None  # the encoder's message when it refused these frames
    # each channel's PSNR over the whole cube, where the encoder measured it (PSNR targets)
    psnr: dict[str, float] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths.values())

    def unlink(self) -> None:
        for p in self.paths.values():
            p.unlink(missing_ok=True)


def _progress(enabled: bool, total: int, desc: str) -> tqdm | None:
    if not enabled:
        return None
    return tqdm(total=total, desc=desc, unit="frame", leave=False)


def encode_together(
    ctx: CubeContext,
    spool: Path,
    jobs: Sequence[tuple[GroupPlan, VideoSettings]],
    indices: Sequence[int],
    tag: str,
    progress: bool = False,
    only: str | None = None,
) -> dict[str, EncodedGroup]:
    """Encode several groups in one pass over the source (of a split group, only the
    stream named ``only``).

    Each block of frames is read once for all groups and handed to every encoder; the
    encoders run in their own processes (or x265's thread pool), so while one block is
    quantised the encoders work on the previous ones and the next block is read in the
    background.
    """
    out: dict[str, EncodedGroup] = {}
    writers: dict[str, object] = {}
    for group, settings in jobs:
        out[group.name] = _open_group(ctx, spool, group, settings, tag, only, writers)
    channels = list(
        {
            c.name: c for g, _ in jobs for c in (g.mask_of if g.kind == "mask" else g.channels)
        }.values()
    )
    bar = _progress(progress, len(indices), ", ".join(g.name for g, _ in jobs))
    try:
        block_size = block_frames(ctx.shape[0] * ctx.shape[1], READ_BLOCK)
        for block, values in iter_blocks(ctx.ds, ctx.layout, channels, indices, block_size):
            for enc in out.values():
                if enc.failed is None:
                    _feed(enc, writers, block, values)
            if bar is not None:
                bar.update(len(block))
        for enc in out.values():
            _close_group(enc, writers)
    except BaseException:
        for enc in out.values():
            enc.unlink()
        raise
    finally:
        if bar is not None:
            bar.close()
    return out


def _open_group(
    ctx: CubeContext,
    spool: Path,
    group: GroupPlan,
    settings: VideoSettings,
    tag: str,
    only: str | None,
    writers: dict[str, object],
) -> EncodedGroup:
    """The group's coder and a writer per stream (added to ``writers``)."""
    coder = GroupCoder(ctx, group, settings)
    streams = [s for s in group.streams(settings) if only is None or s.name == only]
    paths = {s.name: spool / stream_file(s, tag) for s in streams}
    carrier = chunk_codec(settings.codec)
    sizes = (
        {}
        if carrier is not None
        else {s.name: stream_size(coder.tile, s.tiles, s.settings) for s in streams}
    )
    for s in streams:
        writers[s.name] = (
            carrier.open_writer(paths[s.name], settings.keyint, s.settings.pix_fmt)
            if carrier is not None
            else open_writer(paths[s.name], *sizes[s.name], s.settings)
        )
    return EncodedGroup(group, settings, coder, streams, paths, {}, [], sizes)


def _close_group(enc: EncodedGroup, writers: Mapping[str, object]) -> None:
    for s in enc.streams:
        w = writers[s.name]
        if enc.failed is not None or not (enc.kept or enc.group.kind == "mask"):
            _abandon(w, enc.paths[s.name])  # nothing valid, or the encoder gave up
            continue
        try:
            w.close()  # type: ignore[attr-defined]
        except EncoderFailed as exc:
            enc.failed = str(exc)
        enc.offsets[s.name] = getattr(w, "offsets", None)


def _feed(
    enc: EncodedGroup, writers: Mapping[str, object], block: Sequence[int], values: Block
) -> None:
    """One block of a group's frames into its writers; an encoder that gives up marks the
    group failed (the caller picks another codec) instead of failing the whole pass."""
    for idx, (keep, planes) in zip(block, enc.coder.frames(values, len(block)), strict=True):
        if not keep:
            continue
        enc.kept.append(idx)
        try:
            for s in enc.streams:
                frame = planes[s.planes[0] : s.planes[-1] + 1]  # contiguous: a view
                if s.name in enc.sizes:  # a video frame: laid out and padded
                    frame = stream_frame(frame, enc.coder.tile, enc.sizes[s.name], s.tiles)
                writers[s.name].write(frame)  # type: ignore[attr-defined]
        except EncoderFailed as exc:
            enc.failed = str(exc)
            return


def _abandon(writer: object, path: Path) -> None:
    try:
        writer.close()  # type: ignore[attr-defined]
    except InvalidCubeError:
        pass  # an encoder given no frame may refuse to finish: there is nothing to keep
    path.unlink(missing_ok=True)
    path.touch()


def encode_pass(
    ctx: CubeContext,
    spool: Path,
    jobs: Sequence[tuple[GroupPlan, VideoSettings]],
    indices: Sequence[int],
    tag: str,
    options: EncodeOptions,
    progress: bool = False,
) -> dict[str, EncodedGroup]:
    """The groups' streams over the whole cube, with an x265 fallback for encoders that
    give up; groups split for memory (large frames) get a pass per stream."""
    split = [(g, s) for g, s in jobs if len(g.streams(s)) > 1 and g.kind == "continuous"
             and not get_codec(s.codec).lossless_only]  # fmt: skip
    together = [j for j in jobs if j not in split]
    done = _pass_with_fallback(ctx, spool, together, indices, tag, options, progress)
    for group, settings in split:
        parts = [
            _pass_with_fallback(
                ctx, spool, [(group, settings)], indices, tag, options, progress, s.name
            )[group.name]  # fmt: skip
            for s in group.streams(settings)
        ]
        done[group.name] = _joined(parts)
    return done


def _joined(parts: Sequence[EncodedGroup]) -> EncodedGroup:
    """One group's streams encoded in separate passes, as if in one."""
    first = parts[0]
    return replace(
        first,
        streams=[s for p in parts for s in p.streams],
        paths={k: v for p in parts for k, v in p.paths.items()},
        offsets={k: v for p in parts for k, v in p.offsets.items()},
        sizes={k: v for p in parts for k, v in p.sizes.items()},
        settings=parts[-1].settings,
        failed=next((p.failed for p in parts if p.failed), None),
    )


def _pass_with_fallback(
    ctx: CubeContext,
    spool: Path,
    jobs: Sequence[tuple[GroupPlan, VideoSettings]],
    indices: Sequence[int],
    tag: str,
    options: EncodeOptions,
    progress: bool = False,
    only: str | None = None,
) -> dict[str, EncodedGroup]:
    """One pass over the cube; a group whose encoder gave up is encoded again with x265
    when the codec was the planner's choice, and is an error when the user named it.

    The writers count the frames they get back, so an encoder that gives up shows here even
    when it exits 0 (vvenc 1.15's thread pool did, about one encode in three on 2 cores).
    """
    if not jobs:
        return {}
    done = encode_together(ctx, spool, jobs, indices, tag, progress, only)
    release_free_memory()
    failed = [(g, s) for g, s in jobs if done[g.name].failed is not None]
    if not failed:
        return done
    if options.codec != AUTO:
        g, s = failed[0]
        raise InvalidCubeError(
            f"group {g.name!r}: {s.codec} at quantiser {s.crf:g} refused the frames "
            f"({done[g.name].failed}); use a higher crf/psnr target or another codec"
        )
    retry = [
        (g, replace(s, codec=X265_CODEC.name, crf=min(cast(float, s.crf), X265_CODEC.max_quality)))
        for g, s in failed
    ]
    for g, _ in retry:
        done[g.name].unlink()
    done.update(encode_together(ctx, spool, retry, indices, f"{tag}.x265", progress, only))
    return done
