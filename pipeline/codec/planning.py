"""Planning: which channels are coded together (groups), and how a group becomes streams.

A *group* is the unit of rate control: its channels share one codec and one quantiser
setting and, when decorrelated, one KLT. A *stream* is one video file: a lossy group is
one stream (its planes - channels or KLT components - as one plane, three planes, or
tiled top to bottom in one frame); an FFV1 group has one stream per plane.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.codec.cube import Channel, ChannelStats, CubeLayout
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
MASK_CHUNK = 32
# VVC padded from 33 x 49 to 64 x 64 px still took 0.95x x265's bits on an hourly field
# (unpadded 34 x 50 took 1.11x); a frame that would grow more than this goes to x265
MAX_PADDING = 4
# pixels in one lossy stream's frame before a group is split into a stream per tile run
MAX_STREAM_PIXELS = 1 << 20
# a band group's name becomes its stream file names (``<name>.mkv``, ``<name>.0.mkv``) and,
# dots mapped to '_', TACO child ids: a plain identifier, nothing a path could read as a folder
GROUP_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
GROUP_NAME_MAX = 48


def group_name_problem(name: object) -> str | None:
    """What is wrong with a band group's name given by a recipe or the API, or None."""
    if not isinstance(name, str):
        return f"{name!r} is not a string"
    if len(name) > GROUP_NAME_MAX:
        return f"{name[:20]!r}... is {len(name)} characters long (at most {GROUP_NAME_MAX})"
    if not GROUP_NAME.fullmatch(name):
        return (
            f"{name!r} is not a plain identifier: a letter, then letters, digits, '_' or '-' "
            "(the name becomes stream file names)"
        )
    return None


def taco_key(filename: str) -> str:
    """A file's TACO child id (taco.staged.child_id: dots -> '_'), case-folded: two files
    with the same key would be one child of a sample (and one file on a case-insensitive
    disk)."""
    return filename.replace(".", "_").casefold()


def check_group_names(names: Sequence[str | None], where: str = "band group") -> None:
    """Every given name a plain identifier, none repeated once mapped to a TACO child id."""
    seen: dict[str, str] = {}
    for name in names:
        if name is None:
            continue
        problem = group_name_problem(name)
        if problem:
            raise InvalidCubeError(f"{where} name {problem}")
        key = taco_key(name)
        if key in seen:
            other = seen[key]
            same = "is given twice" if other == name else f"and {other!r} name the same files"
            raise InvalidCubeError(f"{where} name {name!r} {same} (names must differ)")
        seen[key] = name


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
        one or three), one per plane for FFV1 (named ``.0``, ``.1``... when several)."""
        settings = settings or self.settings
        if self.kind == "mask":
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


def group_name(names: Sequence[str], taken: set[str]) -> str:
    base = "_".join(re.sub(r"[^A-Za-z0-9]+", "", n) or "band" for n in names)[:48] or "stream"
    name, i = base.lower(), 1
    folded = {taco_key(t) for t in taken}  # a recipe's "RGB" takes "rgb" too
    while taco_key(name) in folded:
        name, i = f"{base.lower()}{i}", i + 1
    taken.add(name)
    return name


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


ENGINES = ("auto", "ffmpeg", "pyav")


def resolve_engine(engine: str) -> str:
    """``auto`` means the ffmpeg command line whenever a binary exists.

    Each ffmpeg process holds one x265 encoder. In one process, PyAV's libx265 lets
    encoders disturb each other: the first encode of a noisy cube in a process matches
    the command line's, later ones differ from run to run, and two encoders alive at once
    have crashed (SIGSEGV in flush). The command line was also 7% faster on a 1024 px cube.
    """
    if engine not in ENGINES:
        raise InvalidCubeError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    from pipeline.codec.ffmpeg_engine import ffmpeg_exe

    return "ffmpeg" if ffmpeg_exe() else "pyav"


def codec_candidates(
    options: EncodeOptions,
    engine: str,
    target: float | None,
    shape: tuple[int, int] = (0, 0),
) -> list[str]:
    """Lossy codecs a group may use, best guess first.

    An explicit codec is checked against the engine; ``auto`` keeps the candidates the
    engine can run, within the encode-time budget, below their PSNR ceiling (VVC's 10 bits
    cannot reach the highest targets; 12-bit x265 can) and whose minimum frame size does
    not pad the cube's ``shape`` to more than ``MAX_PADDING`` times its pixels.
    """
    if options.codec != AUTO:
        codec = get_codec(options.codec)
        if engine not in codec.engines:
            raise InvalidCubeError(
                f"codec {codec.name!r} is not in PyAV's wheels: encode it with "
                "engine='ffmpeg' (PyAV decodes it)"
            )
        return [codec.name]
    out = []
    for name in options.candidates:
        codec = get_codec(name)
        if engine not in codec.engines or codec.relative_cost > options.max_cost:
            continue
        if target is not None and target > codec.psnr_ceiling:
            continue
        padded = max(shape[0], codec.min_side) * max(shape[1], codec.min_side)
        if padded > MAX_PADDING * max(shape[0] * shape[1], 1):
            continue
        out.append(name)
    return out or [X265_CODEC.name]


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
        keyint=options.keyint,
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
    plans += _categorical_plans(layout, stats, ffv1, taken)
    mask = _mask_plan(layout, stats, options, taken)
    plans += [mask] if mask else []
    _check_stream_files(plans)
    return plans


def _check_stream_files(plans: Sequence[GroupPlan]) -> None:
    """Every stream file a plain file name (names from data go through confine.safe_name)
    and no two the same TACO child: ``a.0.mkv`` and ``a_0.mkv`` would be one."""
    from pipeline.codec.passes import stream_file
    from pipeline.confine import safe_name
    from pipeline.errors import UnsafePathError

    seen: dict[str, str] = {}
    for g in plans:
        for s in g.streams():
            file = stream_file(s, g.kind)
            try:
                safe_name(file, f"band group {g.name!r}: stream file")
            except UnsafePathError as exc:
                raise InvalidCubeError(str(exc)) from None
            key = taco_key(file)
            if key in seen:
                raise InvalidCubeError(
                    f"band group {g.name!r}: stream file {file!r} and {seen[key]!r} would be "
                    "one TACO child (dots read as '_'); rename the group"
                )
            seen[key] = file


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
        if klt and self._klt(chans):
            name = spec.name if spec and spec.name else None
            name = name or group_name([c.name for c in chans[:3]], taken)
            taken.add(name)
            return [GroupPlan(name, "continuous", list(chans), settings, target, "klt",
                              frame_pixels=pixels)]  # fmt: skip
        per = 3 if get_codec(codec).max_planes >= 3 else 1
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
    layout: CubeLayout, stats: dict[str, ChannelStats], ffv1: VideoSettings, taken: set[str]
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
        settings = replace(ffv1, pix_fmt=pix)
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
    chunk = min(options.keyint, MASK_CHUNK)
    mask = VideoSettings(codec=MASK_CODEC, pix_fmt="bits", crf=None, lossless=True, keyint=chunk)
    return GroupPlan(group_name(["masks"], taken), "mask", [], mask, mask_of=masked, inf_of=infs)
