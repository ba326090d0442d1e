"""A map-style training dataset over published shards: one item per (sample, time window,
spatial chip), decoding only that window.

Each sample's manifest is read once, when the dataset is made, to count its windows and
chips; an item then decodes its window's frames (seeking to the keyframe before them) and
crops its chip. The dataset pickles without any open file, and each process opens the
shards it reads itself, after a fork too, so it works as is in ``torch.utils.data.
DataLoader`` workers (fork or spawn) and ``multiprocessing`` pools::

    from torch.utils.data import DataLoader
    from cubecast import CubeDataset

    ds = CubeDataset("out/shards/.tacocat", window=16, chip=64, variables=["B04", "B8A"])
    len(ds)                     # samples x windows x chips
    ds[0]                       # {"id": ..., "t0": 0, "y0": 0, "x0": 0, "B04": (16, 64, 64), ...}
    for batch in DataLoader(ds, batch_size=8, shuffle=True, num_workers=2):
        batch["B04"]            # torch tensor (8, 16, 64, 64)

Shards can be local paths, http(s) URLs (read in cached blocks, see
:mod:`pipeline.taco.cachedrange`; hub URLs get ``HF_TOKEN``), a ``.tacocat`` folder or a
tacoreader dataset. In worker processes the video decoder runs on one thread (the workers
are the parallelism; ``CUBECAST_DECODE_THREADS`` overrides it); in the process that made
the dataset it uses every usable core, as ``open_sample`` does.
"""

from __future__ import annotations

import bisect
import os
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import xarray as xr

from pipeline.codec.decode import decode_cube
from pipeline.codec.encoded import EncodedCube
from pipeline.errors import CubecastError
from pipeline.taco.read import _open_archive, _shards_of, sample_encoded, sample_ids

OUTPUTS = ("numpy", "xarray")
THREADS_ENV = "CUBECAST_DECODE_THREADS"


@dataclass(frozen=True)
class SampleInfo:
    """What the manifest says of one sample: enough to count and place its items."""

    shard: int  # index into CubeDataset.shards
    id: str
    n_frames: int
    height: int
    width: int
    dims: tuple[str, str, str]  # time, y, x


@dataclass
class _Shard:
    archive: zipfile.ZipFile
    fh: Any
    cubes: dict[str, EncodedCube] = field(default_factory=dict)

    def close(self) -> None:
        self.cubes.clear()
        self.archive.close()
        self.fh.close()


class _OpenShards:
    """One process's open shards, least recently used first; never pickled or shared."""

    def __init__(self, max_open: int) -> None:
        self.pid = os.getpid()
        self.max_open = max_open
        self.shards: OrderedDict[str, _Shard] = OrderedDict()
        self.last: tuple[tuple[int, str, int], xr.Dataset] | None = None  # latest window

    def get(self, path: str) -> _Shard:
        held = self.shards.get(path)
        if held is not None:
            self.shards.move_to_end(path)
            return held
        archive, fh = _open_archive(path)
        held = self.shards[path] = _Shard(archive, fh)
        while len(self.shards) > self.max_open:
            self.shards.popitem(last=False)[1].close()
        return held

    def cube(self, path: str, sid: str) -> EncodedCube:
        shard = self.get(path)
        enc = shard.cubes.get(sid)
        if enc is None:
            enc = shard.cubes[sid] = sample_encoded(shard.archive, sid, path)
        return enc

    def close(self) -> None:
        self.last = None
        while self.shards:
            self.shards.popitem()[1].close()


def _positive(name: str, value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise CubecastError(f"{name}={value!r}: must be a whole number of at least 1, or None")
    return value


class CubeDataset:
    """Items of (sample, time window, chip) over the samples of ``source``'s shards.

    ``window`` frames per item starting every ``stride`` frames (default: ``window``; no
    window: the whole cube); ``chip`` x ``chip`` pixel tiles on a grid of step ``chip``
    (remainders dropped; no chip: the whole frame). Items run sample by sample, then window
    by window, then chip by chip, so consecutive indices reuse one decoded window.
    ``output="numpy"`` gives ``{"id", "t0", "y0", "x0", <variable>: array}``;
    ``"xarray"`` the cropped Dataset, with the same four keys in its attrs. At most
    ``max_open`` shards are kept open per process.
    """

    def __init__(
        self,
        source: Any,
        *,
        window: int | None = None,
        stride: int | None = None,
        chip: int | None = None,
        variables: Sequence[str] | None = None,
        output: Literal["numpy", "xarray"] = "numpy",
        max_open: int = 4,
    ) -> None:
        self.window = _positive("window", window)
        self.stride = _positive("stride", stride)
        self.chip = _positive("chip", chip)
        _positive("max_open", max_open)
        if stride is not None and window is None:
            raise CubecastError(f"stride={stride}: needs a window (the whole cube is one item)")
        if output not in OUTPUTS:
            raise CubecastError(f"output={output!r}: must be one of {', '.join(OUTPUTS)}")
        if isinstance(variables, str):
            raise CubecastError(f"variables={variables!r}: must be a list of names, not a str")
        self.variables = list(variables) if variables is not None else None
        self.output = output
        self.max_open = max_open
        self.shards = _shards_of(source)
        self._home = os.getpid()
        self._proc: _OpenShards | None = None
        self.samples = [self._check(s) for s in self._read_samples()]
        self._ends = np.cumsum([self._count(s) for s in self.samples]).tolist()

    def _read_samples(self) -> list[SampleInfo]:
        """Every sample's manifest, shard by shard (each shard opened once)."""
        out = []
        for k, path in enumerate(self.shards):
            archive = self._open().get(path).archive
            for sid in sample_ids(archive):
                m = self._open().cube(path, sid).manifest
                h, w = m.frame_shape
                out.append(SampleInfo(k, sid, m.n_frames, h, w, (m.time_dim, m.y_dim, m.x_dim)))
                self._check_variables(m, f"{path}:{sid}")
        if not out:
            raise CubecastError(f"{self.shards}: no samples in these shards")
        return out

    def _check_variables(self, m: Any, where: str) -> None:
        have = [v.name for v in m.variables] + (m.aux.variables if m.aux else [])
        unknown = [v for v in self.variables or [] if v not in have]
        if unknown:
            raise CubecastError(
                f"variables: {where} has no variable {unknown[0]!r} "
                f"(have: {', '.join(m.data_vars_order)})"
            )

    def _check(self, s: SampleInfo) -> SampleInfo:
        where = f"{self.shards[s.shard]}:{s.id}"
        if self.window is not None and self.window > s.n_frames:
            raise CubecastError(
                f"window={self.window}: longer than the {s.n_frames} frames of {where}"
            )
        if self.chip is not None and self.chip > min(s.height, s.width):
            raise CubecastError(
                f"chip={self.chip}: larger than the {s.height} x {s.width} frames of {where}"
            )
        return s

    def _count(self, s: SampleInfo) -> int:
        return self._n_windows(s) * self._n_chips(s)[0] * self._n_chips(s)[1]

    def _n_windows(self, s: SampleInfo) -> int:
        if self.window is None:
            return 1
        return (s.n_frames - self.window) // (self.stride or self.window) + 1

    def _n_chips(self, s: SampleInfo) -> tuple[int, int]:
        if self.chip is None:
            return 1, 1
        return s.height // self.chip, s.width // self.chip

    def __len__(self) -> int:
        return int(self._ends[-1])

    def locate(self, index: int) -> tuple[SampleInfo, int, int, int]:
        """Item ``index``'s sample and its window's first frame and chip's corner (t0, y0,
        x0), without decoding anything."""
        n = len(self)
        if not isinstance(index, int | np.integer) or isinstance(index, bool):
            raise TypeError(f"index {index!r}: must be an int")
        i = int(index) + n if index < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {n} items")
        k = bisect.bisect_right(self._ends, i)
        s = self.samples[k]
        rest = i - (self._ends[k - 1] if k else 0)
        ny, nx = self._n_chips(s)
        w, c = divmod(rest, ny * nx)
        t0 = w * (self.stride or self.window or 0)
        cy, cx = divmod(c, nx)
        return s, t0, cy * (self.chip or 0), cx * (self.chip or 0)

    def __getitem__(self, index: int) -> dict[str, Any] | xr.Dataset:
        s, t0, y0, x0 = self.locate(index)
        keys = {"id": s.id, "t0": t0, "y0": y0, "x0": x0}
        if self.chip is None:
            ds = self._decode(s, t0)
        else:  # a copy of the chip: the caller may change it, the kept window stays
            _, ydim, xdim = s.dims
            crop = {ydim: slice(y0, y0 + self.chip), xdim: slice(x0, x0 + self.chip)}
            ds = self._window(s, t0)
            ds = ds.isel({d: c for d, c in crop.items() if d in ds.dims}).copy(deep=True)
        if self.output == "xarray":
            return ds.assign_attrs(keys)
        return keys | {str(n): np.ascontiguousarray(v.values) for n, v in ds.data_vars.items()}

    def _decode(self, s: SampleInfo, t0: int) -> xr.Dataset:
        enc = self._open().cube(self.shards[s.shard], s.id)
        return decode_cube(enc, self.variables, time=slice(t0, t0 + (self.window or s.n_frames)))

    def _window(self, s: SampleInfo, t0: int) -> xr.Dataset:
        """The decoded frames of ``s`` from ``t0``, kept for the chips that follow."""
        proc = self._open()
        key = (s.shard, s.id, t0)
        if proc.last is not None and proc.last[0] == key:
            return proc.last[1]
        proc.last = None  # the old window's memory goes before the new one is decoded
        ds = self._decode(s, t0)
        proc.last = (key, ds)
        return ds

    def _open(self) -> _OpenShards:
        """This process's shards: a forked child leaves its parent's handles alone (their
        file offsets and sockets are shared with the parent) and opens its own. A worker
        (any process but the one that made the dataset) decodes on one thread unless
        ``CUBECAST_DECODE_THREADS`` says otherwise: the workers are the parallelism, and
        each decoder's threads would compete with the other workers for the cores."""
        if self._proc is None or self._proc.pid != os.getpid():
            if os.getpid() != self._home:
                os.environ.setdefault(THREADS_ENV, "1")
            self._proc = _OpenShards(self.max_open)
        return self._proc

    def close(self) -> None:
        """Close the shards this process opened (they reopen on the next item)."""
        if self._proc is not None and self._proc.pid == os.getpid():
            self._proc.close()
        self._proc = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_proc": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (
            f"CubeDataset({len(self.samples)} samples in {len(self.shards)} shards, "
            f"{len(self)} items; window={self.window}, stride={self.stride}, chip={self.chip})"
        )
