"""Encoder threads follow the cubes encoding side by side (issue 27): N workers on N cores
run single-threaded encoders instead of N encoders that each spread over every core."""

from __future__ import annotations

import pytest

from pipeline.codec.cores import ENCODE_THREADS_ENV, encode_threads, shared_threads
from pipeline.codec.settings import VideoSettings
from pipeline.codec.videocodecs import get_codec
from pipeline.errors import CubecastError


def test_the_cores_are_shared_by_the_cubes_encoding_at_once(monkeypatch):
    monkeypatch.delenv(ENCODE_THREADS_ENV, raising=False)
    assert shared_threads(1, cores=2) == 0  # one cube: the encoders' own choice
    assert shared_threads(2, cores=2) == 1
    assert shared_threads(3, cores=2) == 1  # never below one
    assert shared_threads(2, cores=8) == 4
    assert encode_threads(0) == 0 and encode_threads(3) == 3


def test_the_environment_decides_over_the_share_and_is_checked(monkeypatch):
    monkeypatch.setenv(ENCODE_THREADS_ENV, "3")
    assert encode_threads(0) == 3 and encode_threads(1) == 1  # an explicit setting wins
    assert shared_threads(2, cores=2) == 0  # left to the variable
    monkeypatch.setenv(ENCODE_THREADS_ENV, "two")
    with pytest.raises(CubecastError, match=rf"{ENCODE_THREADS_ENV}='two': must be a whole"):
        encode_threads(0)


def test_each_lossy_encoder_is_told_its_threads():
    x265 = VideoSettings(codec="libx265", pix_fmt="gray12le", threads=1)
    assert "pools=1" in get_codec("libx265").options(x265)["x265-params"]
    aom = VideoSettings(codec="libaom-av1", pix_fmt="gray12le", threads=1)
    assert get_codec("libaom-av1").options(aom)["threads"] == "1"
    own = VideoSettings(codec="libaom-av1", pix_fmt="gray12le")
    assert "threads" not in get_codec("libaom-av1").options(own)
    vvc = VideoSettings(codec="libvvenc", pix_fmt="yuv420p10le", threads=2)
    assert get_codec("libvvenc").options(vvc)["vvenc-params"] == "threads=0"  # always one
