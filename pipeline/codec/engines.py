"""The engines behind one small interface: a writer per stream (PyAV in-process, or the
ffmpeg command line for the encoders PyAV's wheels lack), and PyAV for every read."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline.codec.ffmpeg_engine import FfmpegWriter
from pipeline.codec.pyav_engine import PyAVWriter, StreamWriter
from pipeline.codec.settings import VideoSettings


def open_writer(
    path: str | os.PathLike[str], height: int, width: int, settings: VideoSettings
) -> StreamWriter:
    """The engine's writer for ``path`` (PyAV in-process, or the ffmpeg command line)."""
    if settings.engine == "ffmpeg":
        return FfmpegWriter(path, height, width, settings)
    return PyAVWriter(path, height, width, settings)


def encode_frames(
    frames: Iterable[np.ndarray], height: int, width: int, settings: VideoSettings
) -> bytes:
    """Encode frames into a Matroska byte string (small streams: samples, tests)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stream.mkv"
        writer: StreamWriter = open_writer(path, height, width, settings)
        for planes in frames:
            writer.write(planes)
        writer.close()
        return path.read_bytes()
