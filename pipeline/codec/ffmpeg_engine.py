"""The ffmpeg command-line engine: the same Matroska streams as the PyAV engine, produced by
an ``ffmpeg`` binary (the one ``imageio-ffmpeg`` ships, or ``$CUBECAST_FFMPEG``).

It exists for encoders PyAV's wheels lack (VVC, libaom, SVT-AV1, NVENC where a GPU is
present) and because one encoder per process is reproducible where PyAV's in-process
libx265 is not: frames go to ffmpeg's stdin as raw planar video, so the pipeline around it
is unchanged, and PyAV decodes what it wrote.
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.codec.pyav_engine import decode_frames
from pipeline.codec.settings import VideoSettings, sample_dtype
from pipeline.codec.videocodecs import get_codec
from pipeline.errors import CorruptStreamError, InvalidCubeError

# Matroska without dates, random segment UIDs or writing-application strings: the same
# frames and settings give the same bytes, so a re-publish uploads nothing.
BITEXACT = {"fflags": "+bitexact", "flags:v": "+bitexact", "map_metadata": "-1"}


def ffmpeg_exe() -> str | None:
    """``$CUBECAST_FFMPEG`` if set, else imageio-ffmpeg's binary; None if neither exists.

    ffmpeg on PATH is never picked silently: Debian's 5.1 decodes FFV1 frames of 1-2 px
    wrongly, and an unknown build may lack the encoders the recipes name.
    """
    exe = os.environ.get("CUBECAST_FFMPEG")
    if exe:
        return exe
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None


def _require() -> str:
    exe = ffmpeg_exe()
    if exe is None:
        raise InvalidCubeError(
            "engine 'ffmpeg' needs an ffmpeg binary: install imageio-ffmpeg or set "
            "CUBECAST_FFMPEG to one"
        )
    self_test(exe)
    return exe


@functools.lru_cache(maxsize=8)
def self_test(exe: str) -> None:
    """Refuse a binary that does not round-trip a tiny FFV1 and x265 frame exactly.

    Run once per binary and process: two encodes of one tiny frame (about 0.1 s).
    """
    rng = np.random.default_rng(0)
    cases = [
        (
            VideoSettings("ffv1", "gray16le", crf=None, lossless=True, keyint=1),
            np.array([[[0, 65535], [1234, 4321]]], dtype=np.uint16),
        ),
        (
            VideoSettings("libx265", "gray12le", crf=None, lossless=True, preset="ultrafast"),
            rng.integers(0, 4096, (1, 16, 16)).astype(np.uint16),
        ),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for settings, planes in cases:
            path = Path(tmp) / f"{settings.codec}.mkv"
            h, w = planes.shape[1:]
            try:
                writer = FfmpegWriter(path, h, w, settings, exe=exe, checked=True)
                writer.write(planes)
                writer.close()
                got = [f for _, f in decode_frames(path, 1, name=str(path))]
            except (InvalidCubeError, CorruptStreamError, OSError) as exc:
                raise InvalidCubeError(
                    f"ffmpeg binary {exe} fails the self-test ({settings.codec}): {exc}"
                ) from exc
            if len(got) != 1 or not np.array_equal(got[0], planes):
                raise InvalidCubeError(
                    f"ffmpeg binary {exe} fails the self-test: a {h} x {w} {settings.codec} frame "
                    "does not round-trip exactly (set CUBECAST_FFMPEG to a working ffmpeg, "
                    "or unset it to use imageio-ffmpeg's)"
                )


class EncoderFailed(InvalidCubeError):
    """The encoder process gave up on the frames (e.g. vvenc on a frame it cannot fit)."""


class FfmpegWriter:
    """Streams raw planar frames into an ``ffmpeg`` process that writes ``path``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        height: int,
        width: int,
        settings: VideoSettings,
        exe: str | None = None,
        checked: bool = False,
    ) -> None:
        import ffmpeg

        exe = exe or _require()
        if not checked:
            self_test(exe)
        self.settings = settings
        self._codec = get_codec(settings.codec)
        stream = ffmpeg.input(
            "pipe:",
            format="rawvideo",
            pix_fmt=settings.pix_fmt,
            s=f"{width}x{height}",
            framerate=1,
            thread_queue_size=2,  # raw frames waiting in ffmpeg: 2, not 8 (6 MB each at 1 Mpx)
        ).output(
            os.fspath(path),
            vcodec=settings.codec,
            pix_fmt=settings.pix_fmt,
            format="matroska",
            **BITEXACT,
            **get_codec(settings.codec).options(settings),
        )
        self._path = Path(path)
        self.frames = 0
        self._proc = (
            stream.overwrite_output()
            .global_args("-loglevel", "error")
            .run_async(cmd=exe, pipe_stdin=True, pipe_stderr=True)
        )

    def write(self, planes: np.ndarray) -> None:
        try:
            self._proc.stdin.write(self._codec.frame_bytes(planes, self.settings.pix_fmt))
        except BrokenPipeError:
            self._fail()
        self.frames += 1

    def close(self) -> None:
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        if self._proc.wait() != 0:
            self._fail()
        stored = _packets(self._path)
        if stored != self.frames:
            # an encoder that gives up mid-stream can still exit 0 (vvenc's thread pool did,
            # leaving a header and no frame): count what came out
            raise EncoderFailed(
                f"{self.settings.codec} wrote {stored} of {self.frames} frames to {self._path.name}"
            )

    def _fail(self) -> None:
        self._proc.kill()
        self._proc.wait()
        err = self._proc.stderr.read().decode(errors="replace")
        raise EncoderFailed(f"ffmpeg ({self.settings.codec}) failed: {err.strip()[-500:]}")


def _packets(path: Path) -> int:
    """Video packets in a Matroska file, demuxed without decoding."""
    import av

    try:
        with av.open(str(path), "r", format="matroska") as c:
            return sum(1 for p in c.demux(video=0) if p.size)
    except (av.FFmpegError, OSError):
        return 0


def decode_frames_cli(
    data: bytes, n_planes: int, pix_fmt: str, height: int, width: int, name: str = "stream"
) -> Iterator[tuple[int, np.ndarray]]:
    exe = _require()
    dtype = sample_dtype(pix_fmt)
    frame_bytes = n_planes * height * width * dtype.itemsize
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "stream.mkv"
        src.write_bytes(data)
        cmd = [
            exe,
            "-loglevel",
            "error",
            "-i",
            str(src),
            "-f",
            "rawvideo",
            "-pix_fmt",
            pix_fmt,
            "-",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        i = 0
        while True:
            buf = proc.stdout.read(frame_bytes)
            if not buf:
                break
            if len(buf) < frame_bytes:
                raise CorruptStreamError(f"{name}: truncated frame {i} from ffmpeg")
            yield i, np.frombuffer(buf, dtype=dtype).reshape(n_planes, height, width)
            i += 1
        err = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise CorruptStreamError(f"{name}: ffmpeg cannot decode ({err.strip()[-300:]})")
