"""Checks for settings that the codec libraries would otherwise ignore in silence.

libx265 only logs a warning for an unknown ``x265-params`` key or a bad value and encodes
with its defaults, so a typo in a recipe would publish a dataset made with other settings
than the ones written down. The check opens a libx265 encoder once with the parameters and
turns its warnings into an error naming the key.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import cache

_ITEM = re.compile(r"^[a-z0-9][a-z0-9-]*=[^:=]*$")


def x265_params_problem(params: str) -> str | None:
    """What is wrong with an ``x265_params`` string (``key=value:key=value``), or None."""
    if not params.strip():
        return None
    for item in params.split(":"):
        if not _ITEM.match(item.strip()):
            return f"{item!r} is not 'key=value' (items are separated by ':')"
    return _libx265_problem(params.strip())


@cache
def _libx265_problem(params: str) -> str | None:
    try:
        import av
        import av.logging
    except ImportError:  # no PyAV: the syntax check above is all we can do
        return None
    old = av.logging.get_level()
    try:
        with av.logging.Capture(local=False) as logs:
            av.logging.set_level(av.logging.WARNING)
            cc = av.CodecContext.create("libx265", "w")
            cc.width = cc.height = 64
            cc.pix_fmt = "yuv420p"
            cc.time_base = Fraction(1, 25)
            cc.options = {"x265-params": f"log-level=none:{params}"}
            cc.open()
    except av.error.FFmpegError as exc:
        return f"libx265 refuses {params!r} ({exc})"
    except Exception:  # no libx265 in this PyAV build: leave it to the encoder
        return None
    finally:
        av.logging.set_level(old)
    for _level, _name, message in logs:
        text = message.strip().rstrip(".")
        if text.startswith("Unknown option: "):
            return f"unknown x265 parameter {text.removeprefix('Unknown option: ')!r}"
        m = re.match(r"Invalid value for (\S+): (.*)$", text)
        if m:
            return f"invalid value {m[2]!r} for x265 parameter {m[1]!r}"
    return None
