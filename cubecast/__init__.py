"""cubecast's public API under a name that a user's own ``pipeline.py`` cannot shadow.

The code lives in the package ``pipeline``, a common name: a ``pipeline.py`` or
``pipeline/`` in the current folder or a script's folder comes first on ``sys.path``, so
``import pipeline`` there imports the user's file. ``import cubecast`` loads cubecast's
``pipeline`` from its own location beside this package whatever ``sys.path`` holds (with a
warning naming the other file: in this process ``import pipeline`` now gives cubecast's).
Only one module can be ``pipeline`` in a process: if another was imported first, ImportError
names its file and says to rename it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from pathlib import Path
from types import ModuleType

_HOME = Path(__file__).resolve().parent.parent / "pipeline"


class PipelineShadowedWarning(UserWarning):
    """Another ``pipeline`` module is on ``sys.path``; cubecast loaded its own instead."""


def _origin(module: ModuleType | None) -> str:
    return str(getattr(module, "__file__", None) or getattr(module, "__path__", "") or module)


def _is_ours(path: str | None) -> bool:
    return path is not None and Path(path).resolve() == _HOME / "__init__.py"


def _load_pipeline() -> ModuleType:
    """cubecast's ``pipeline`` package, imported from ``_HOME`` even when ``sys.path``
    would find another one first."""
    loaded = sys.modules.get("pipeline")
    if loaded is not None:
        if _is_ours(getattr(loaded, "__file__", None)):
            return loaded
        raise ImportError(
            f"{_origin(loaded)} was imported as `pipeline`, the name of cubecast's own "
            "package: rename that file (e.g. my_pipeline.py), then import cubecast"
        )
    found = importlib.util.find_spec("pipeline")
    if found is not None and _is_ours(found.origin):
        return importlib.import_module("pipeline")
    if found is not None:
        where = found.origin or ", ".join(found.submodule_search_locations or [])
        warnings.warn(
            f"{where} shadows cubecast's package `pipeline`; cubecast loaded its own from "
            f"{_HOME}, so `import pipeline` in this process gives cubecast's: rename that file",
            PipelineShadowedWarning,
            stacklevel=3,
        )
    spec = importlib.util.spec_from_file_location(
        "pipeline", _HOME / "__init__.py", submodule_search_locations=[str(_HOME)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cubecast's package `pipeline` is missing at {_HOME}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pipeline"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("pipeline", None)
        raise
    return module


_load_pipeline()

from pipeline import (  # noqa: E402  (after the loader: this must be cubecast's pipeline)
    CubecastError,
    EncodedCube,
    EncodeOptions,
    GroupSpec,
    __version__,
    decode_cube,
    encode_cube,
    iter_decode,
    iter_samples,
    open_sample,
)

__all__ = [
    "CubecastError",
    "EncodeOptions",
    "EncodedCube",
    "GroupSpec",
    "__version__",
    "decode_cube",
    "encode_cube",
    "iter_decode",
    "iter_samples",
    "open_sample",
]
if importlib.util.find_spec("pipeline.taco.loader") is not None:  # `import *` must not fail
    __all__.append("CubeDataset")


def __getattr__(name: str) -> object:
    """``CubeDataset`` on first use: its module (and torch, if it uses it) is not needed to
    decode a sample."""
    if name == "CubeDataset":
        from pipeline.taco.loader import CubeDataset

        return CubeDataset
    raise AttributeError(f"module 'cubecast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
