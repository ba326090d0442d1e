"""The ffmpeg command-line engine: the same Matroska streams as the PyAV engine, produced by
an ``ffmpeg`` binary (the system's, or the one ``imageio-ffmpeg`` ships).

It exists for encoders PyAV's wheels lack (SVT-AV1, libaom, NVENC where a GPU is present):
frames go to ffmpeg's stdin as raw planar video, so the pipeline around it is unchanged,
and either engine decodes what the other wrote.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import CorruptStreamError, InvalidCubeError
from pipeline.video import VideoSettings, sample_dtype


def ffmpeg_exe() -> str | None:
    """``$CUBECAST_FFMPEG``, ffmpeg on PATH, or imageio-ffmpeg's binary; None if none."""
    exe = os.environ.get("CUBECAST_FFMPEG") or shutil.which("ffmpeg")
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
            "engine 'ffmpeg' needs an ffmpeg binary: install imageio-ffmpeg, put ffmpeg on "
            "PATH or set CUBECAST_FFMPEG"
        )
    return exe


def _planar_bytes(planes: np.ndarray, pix_fmt: str) -> memoryview:
    """gbrp's planar order is G, B, R, which is our plane order 0, 1, 2 (see video.py)."""
    return np.ascontiguousarray(planes, dtype=sample_dtype(pix_fmt)).data


class FfmpegWriter:
    """Streams raw planar frames into an ``ffmpeg`` process that writes ``path``."""

    def __init__(
        self, path: str | os.PathLike[str], height: int, width: int, settings: VideoSettings
    ) -> None:
        import ffmpeg

        exe = _require()
        self.settings = settings
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
            **settings.options(),
        )
        self._proc = (
            stream.overwrite_output()
            .global_args("-loglevel", "error")
            .run_async(cmd=exe, pipe_stdin=True, pipe_stderr=True)
        )

    def write(self, planes: np.ndarray) -> None:
        try:
            self._proc.stdin.write(_planar_bytes(planes, self.settings.pix_fmt))
        except BrokenPipeError:
            self._fail()

    def close(self) -> None:
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        if self._proc.wait() != 0:
            self._fail()

    def _fail(self) -> None:
        self._proc.kill()
        self._proc.wait()
        err = self._proc.stderr.read().decode(errors="replace")
        raise InvalidCubeError(f"ffmpeg ({self.settings.codec}) failed: {err.strip()[-500:]}")


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
