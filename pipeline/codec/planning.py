"""Planning: which channels are coded together (groups), and how a group becomes streams.

A *group* is the unit of rate control: its channels share one codec and one quantiser
setting and, when decorrelated, one KLT. A *stream* is one video file: a lossy group is
one stream (its planes - channels or KLT components - as one plane, three planes, or
tiled top to bottom in one frame); an FFV1 group has one stream per plane; a chunked
carrier (masks, class layers: ``chunkcodecs``) carries a group's planes in one stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.codec.chunkcodecs import chunk_codec
from pipeline.codec.classcodes import CODEC as CLASS_CODEC
from pipeline.codec.codecchoice import codec_candidates, resolve_engine
from pipeline.codec.cube import Channel, ChannelStats, CubeLayout
from pipeline.codec.groupnames import check_group_names, check_stream_files, group_name
from pipeline.codec.manifest import StreamKind
from pipeline.codec.masks import CODEC as MASK_CODEC
from pipeline.codec.options import AUTO, EncodeOptions, GroupSpec
from pipeline.codec.quantize import words_needed
from pipeline.codec.settings import VideoSettings
from pipeline.codec.videocodecs import (
    FFV1_CODEC,
    X265_CODEC,
    get_codec,
)
from pipeline.errors import InvalidCubeError

LOSSLESS_BITS = 16
MAX_GROUP = 16  # channels in one decorrelated group (the KLT is B x B per pixel)
# a KLT pays off when the bands' detail correlates enough: geometric mean of the band
# variances over that of the eigenvalues; 1.0 means independent bands (klt.coding_gain)
KLT_MIN_GAIN = 1.5
# frames per chunk of masks and class layers: a chunk is decompressed whole on read
CHUNK_FRAMES = 32
# pixels in one lossy stream's frame before a group is split into a stream per tile run
MAX_STREAM_PIXELS = 1 << 20


@dataclass
class StreamPlan:
    """One stream file of a group: which of the group's planes it carries."""

    name: str
    planes: list[int]
    settings: VideoSettings
    tiles: int = 1  # planes stacked top to bottom in each frame (when not one or three)


@dataclass
class GroupPlan:
    name: str
    kind: StreamKind
    channels: list[Channel]
    settings: VideoSettings
    psnr_target: float | None = None
    # "klt" when the group is coded as principal components (decided from the cube stats)
    decorrelate: str = "none"
    mask_of: list[Channel] = field(default_factory=list)
    # mask groups: extra planes marking +inf ("+inf") or -inf ("-inf") pixels of a channel
    inf_of: list[tuple[Channel, str]] = field(default_factory=list)
    # lossless bands too wide for one 16-bit plane: the band's exact bits in this many words
    words: int = 0
    frame_pixels: int = 0  # H x W of the cube: large frames get a stream per tile

    @property
    def n_planes(self) -> int:
        if self.kind == "mask":
            return len(self.mask_of) + len(self.inf_of)
        return len(self.channels) * max(self.words, 1)

    def streams(self, settings: VideoSettings | None = None) -> list[StreamPlan]:
        """The group's streams: one for a lossy group (its planes tiled when they are not
        one or three) and for a chunked carrier (masks, class layers), one per plane for
        FFV1 (named ``.0``, ``.1``... when several)."""
        settings = settings or self.settings
        if chunk_codec(settings.codec) is not None:
            return [StreamPlan(self.name, list(range(self.n_planes)), settings)]
        codec = get_codec(settings.codec)
        planes = list(range(self.n_planes))
        if not codec.lossless_only:
            # one stream per lossy group whatever the codec and the KLT decision, so every
            # sample of a dataset has the same files (TACO requires it): three planes where
            # the codec carries three, else the planes tiled top to bottom in one frame
            if self.n_planes > 1 and self.frame_pixels * self.n_planes > MAX_STREAM_PIXELS:
                return self._split_streams(settings)
            if self.n_planes == 1 or (self.n_planes == 3 and codec.max_planes >= 3):
                return [StreamPlan(self.name, planes, _with_planes(settings, self.n_planes))]
            return [StreamPlan(self.name, planes, _with_planes(settings, 1), len(planes))]
        if len(planes) == 1:  # lossless codecs carry one plane a stream
            return [StreamPlan(self.name, planes, settings)]
        return [StreamPlan(f"{self.name}.{p}", [p], settings) for p in planes]

    def _split_streams(self, settings: VideoSettings) -> list[StreamPlan]:
        """Streams of at most ``MAX_STREAM_PIXELS`` a frame, tiles top to bottom, encoded
        one after another: an encoder's memory grows with its frame (x265 took 760 MB and
        libaom 860 MB on four tiled 1024 x 1024 bands, measured), so a cube's streams in
        sequence stay under the 1 GiB a publishing worker gets."""
        per = max(1, MAX_STREAM_PIXELS // max(self.frame_pixels, 1))
        chunks = [list(range(i, min(i + per, self.n_planes))) for i in range(0, self.n_planes, per)]
        one = _with_planes(settings, 1)
        return [
            StreamPlan(f"{self.name}.{k}", chunk, one, len(chunk) if len(chunk) > 1 else 1)
            for k, chunk in enumerate(chunks)
        ]


def _with_planes(settings: VideoSettings, planes: int) -> VideoSettings:
    return replace(settings, pix_fmt=get_codec(settings.codec).pix_fmt(planes))


def candidate_groups(
    layout: CubeLayout, groups: Sequence[GroupSpec]
) -> list[tuple[list[Channel], GroupSpec | None]]:
    """Continuous channels in the recipe's groups, then the rest in groups of up to
    ``MAX_GROUP`` (split further into codec-sized groups where decorrelation is off)."""
    check_group_names([g.name for g in groups])
    continuous = [c for c in layout.channels if c.role == "continuous"]
    by_name = {c.name: c for c in continuous}
    out: list[tuple[list[Channel], GroupSpec | None]] = []
    used: set[str] = set()
    for g in groups:
        chans = []
        for n in g.channels:
            if n not in by_name:
                raise InvalidCubeError(
                    f"band group {list(g.channels)} names {n!r}, which is not a continuous "
                    f"channel of this cube (have: {', '.join(by_name) or 'none'})"
                )
            if n in used:
                raise InvalidCubeError(f"channel {n!r} appears in more than one band group")
            used.add(n)
            chans.append(by_name[n])
        if not 1 <= len(chans) <= MAX_GROUP:
            raise InvalidCubeError(
                f"band group {list(g.channels)} must have 1 to {MAX_GROUP} channels"
            )
        out.append((chans, g))
    rest = [c for c in continuous if c.name not in used]
    for i in range(0, len(rest), MAX_GROUP):
        out.append((rest[i : i + MAX_GROUP], None))
    return out


def plan_groups(
    layout: CubeLayout,
    stats: dict[str, ChannelStats],
    options: EncodeOptions,
    klt_gain: dict[str, float] | None = None,
    frame_shape: tuple[int, int] = (0, 0),
) -> list[GroupPlan]:
    """Groups of the cube with their first settings (the codec may still change under a
    PSNR target). ``klt_gain`` maps a candidate group's first channel to its coding gain."""
    taken: set[str] = set()
    engine = resolve_engine(options.engine)
    base = VideoSettings(
        codec=X265_CODEC.name,
        pix_fmt="gray12le",
        crf=options.crf,
        preset=options.preset,
        keyint=options.stream_keyint,
        x265_params=options.x265_params,
        threads=options.threads,
        engine=engine,
    )
    ffv1 = VideoSettings(
        codec=FFV1_CODEC.name,
        pix_fmt="gray16le",
        crf=None,
        lossless=True,
        keyint=1,
        threads=options.threads,
        engine=engine,
    )
    plans: list[GroupPlan] = []
    candidates = candidate_groups(layout, options.groups)
    taken |= {spec.name for _, spec in candidates if spec is not None and spec.name}
    for all_chans, spec in candidates:
        lossless = options.lossless if spec is None or spec.lossless is None else spec.lossless
        if lossless:
            plans += _lossless_plans(all_chans, stats, ffv1, taken)
            continue
        # A channel with no valid pixel (all NaN or nodata) has nothing to code: the mask
        # restores it whole. Outside a recipe's group (or with only such bands in it) it
        # is a group of its own whose stream stores no frame (an empty file, so the sample
        # has the files its siblings have); in a recipe's group beside bands with data it
        # leaves the group, which codes the rest.
        chans = [c for c in all_chans if stats[c.name].n_valid > 0]
        empty = [c for c in all_chans if stats[c.name].n_valid == 0]
        # the KLT's moments were gathered over pixels valid in all of the candidate's bands
        gains = (klt_gain or {}) if not empty else {}
        lossy = _LossyPlanner(options, stats, base, engine, frame_shape, gains)
        if chans:
            plans += lossy.plans(chans, spec, taken, klt=not empty)
        if empty and (spec is None or not chans):
            own = spec if not chans else None
            plans += lossy.plans(empty, own, taken, klt=False, targeted=False)
    plans += _categorical_plans(layout, stats, _class_settings(options, ffv1), taken)
    mask = _mask_plan(layout, stats, options, taken)
    plans += [mask] if mask else []
    check_stream_files((g.name, stream_file(s)) for g in plans for s in g.streams())
    return plans


def stream_file(stream: StreamPlan, tag: str = "") -> str:
    """``<name><tag>.mkv`` for video, ``.<suffix>`` of its chunked carrier otherwise."""
    carrier = chunk_codec(stream.settings.codec)
    return f"{stream.name}{tag}.{carrier.suffix if carrier else 'mkv'}"


def _class_settings(options: EncodeOptions, ffv1: VideoSettings) -> VideoSettings:
    """Class layers' carrier: zstd chunks of ``CHUNK_FRAMES`` frames at most (as masks, short
    where the video streams' keyframes are), or FFV1 where the options ask for it."""
    if options.class_codec == FFV1_CODEC.name:
        return ffv1
    chunk = min(options.stream_keyint, CHUNK_FRAMES)
    return replace(ffv1, codec=CLASS_CODEC, keyint=chunk, threads=0)


def _lossless_plans(
    chans: Sequence[Channel], stats: dict[str, ChannelStats], ffv1: VideoSettings, taken: set[str]
) -> list[GroupPlan]:
    out = []
    for c in chans:
        st = stats[c.name]
        words = words_needed(np.dtype(st.dtype), st.vmin, st.vmax)
        out.append(GroupPlan(group_name([c.name], taken), "continuous", [c], ffv1, words=words))
    return out


@dataclass(frozen=True)
class _LossyPlanner:
    options: EncodeOptions
    stats: dict[str, ChannelStats]
    base: VideoSettings
    engine: str
    frame_shape: tuple[int, int]
    klt_gain: dict[str, float]

    def plans(
        self,
        chans: Sequence[Channel],
        spec: GroupSpec | None,
        taken: set[str],
        klt: bool = True,
        targeted: bool = True,
    ) -> list[GroupPlan]:
        """One KLT group where the bands' detail correlates (and ``klt`` allows it), else a
        group per codec-sized run of channels (each its own rate-control unit). Without
        ``targeted`` (bands with nothing valid to measure) a PSNR target is not searched."""
        options = self.options
        target = options.psnr if spec is None or spec.psnr is None else spec.psnr
        target = target if targeted else None
        crf = options.crf if spec is None or spec.crf is None else spec.crf
        codec = codec_candidates(options, self.engine, target, self.frame_shape)[0]
        if target is None:
            get_codec(codec).check_quality(crf)
        settings = replace(self.base, codec=codec, crf=crf)
        pixels = self.frame_shape[0] * self.frame_shape[1]
        if klt and not options.band_streams and self._klt(chans):
            name = spec.name if spec and spec.name else None
            name = name or group_name([c.name for c in chans[:3]], taken)
            taken.add(name)
            return [GroupPlan(name, "continuous", list(chans), settings, target, "klt",
                              frame_pixels=pixels)]  # fmt: skip
        per = 3 if get_codec(codec).max_planes >= 3 and not options.band_streams else 1
        runs = [list(chans[i : i + per]) for i in range(0, len(chans), per)]
        runs = [r for run in runs for r in ([run] if len(run) != 2 else [[run[0]], [run[1]]])]
        out = []
        for sub in runs:
            name = spec.name if spec and spec.name and len(runs) == 1 else None
            name = name or group_name([c.name for c in sub], taken)
            taken.add(name)
            out.append(GroupPlan(name, "continuous", sub, settings, target, frame_pixels=pixels))
        return out

    def _klt(self, chans: Sequence[Channel]) -> bool:
        decorrelate = self.options.decorrelate
        gain = self.klt_gain.get(chans[0].name, 1.0)
        return (
            len(chans) > 1
            and all(self.stats[c.name].klt_safe for c in chans)
            and (decorrelate == "klt" or (decorrelate == AUTO and gain >= KLT_MIN_GAIN))
        )


def _categorical_plans(
    layout: CubeLayout, stats: dict[str, ChannelStats], lossless: VideoSettings, taken: set[str]
) -> list[GroupPlan]:
    out = []
    for c in (c for c in layout.channels if c.role == "categorical"):
        st = stats[c.name]
        pix = "gray" if st.vmax - st.vmin <= 255 else "gray16le"
        if st.vmax - st.vmin > 65535:
            raise InvalidCubeError(
                f"categorical variable {c.variable!r} spans {st.vmin:g}..{st.vmax:g}: more than "
                "65536 classes cannot be stored losslessly"
            )
        settings = replace(lossless, pix_fmt=pix)
        out.append(GroupPlan(group_name([c.name], taken), "categorical", [c], settings))
    return out


def _mask_plan(
    layout: CubeLayout, stats: dict[str, ChannelStats], options: EncodeOptions, taken: set[str]
) -> GroupPlan | None:
    continuous = [c for c in layout.channels if c.role == "continuous"]
    masked = [c for c in continuous if stats[c.name].n_invalid > 0]
    if not masked:
        return None
    infs = [(c, "+inf") for c in masked if stats[c.name].n_posinf]
    infs += [(c, "-inf") for c in masked if stats[c.name].n_neginf]
    # masks are chunked by ``keyint`` frames; a chunk is unpacked whole on read, so it
    # stays short whatever the video streams' keyframe interval
    chunk = min(options.stream_keyint, CHUNK_FRAMES)
    mask = VideoSettings(codec=MASK_CODEC, pix_fmt="bits", crf=None, lossless=True, keyint=chunk)
    return GroupPlan(group_name(["masks"], taken), "mask", [], mask, mask_of=masked, inf_of=infs)
