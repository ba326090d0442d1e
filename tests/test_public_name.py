"""`import cubecast` and the `cubecast` command work from a folder holding a user's own
`pipeline.py` (which shadows `import pipeline` there); a `pipeline` imported before
cubecast is named in a clear ImportError."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = [
    "open_sample",
    "iter_samples",
    "decode_cube",
    "iter_decode",
    "encode_cube",
    "EncodeOptions",
    "GroupSpec",
    "EncodedCube",
    "CubecastError",
    "__version__",
]


@pytest.fixture
def user_folder(tmp_path) -> Path:
    """A user's project folder whose own pipeline.py shadows `import pipeline` there."""
    (tmp_path / "pipeline.py").write_text("def run():\n    return 'mine'\n")
    return tmp_path


def _python(folder: Path, code: str) -> subprocess.CompletedProcess:
    # the repository on PYTHONPATH (after the script's folder, as for an installed package)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True
    )


def test_cubecast_exports_the_readers_api():
    import cubecast
    import pipeline

    for name in PUBLIC:
        assert getattr(cubecast, name) is getattr(pipeline, name), name
    assert set(PUBLIC) <= set(cubecast.__all__)
    with pytest.raises(AttributeError):
        cubecast.no_such_name  # noqa: B018


def test_import_cubecast_works_beside_a_users_pipeline_py(user_folder):
    code = (
        "import cubecast, pipeline.codec\n"
        "print(cubecast.open_sample.__module__, pipeline.__file__)\n"
        "from pipeline.recipe import load_recipe\n"
        "print(load_recipe('dynamicearthnet').name)\n"
    )
    r = _python(user_folder, code)
    assert r.returncode == 0, r.stderr
    assert f"pipeline.taco.read {ROOT / 'pipeline' / '__init__.py'}" in r.stdout
    assert "dynamicearthnet" in r.stdout
    # the shadowing file is named once, in a warning: `import pipeline` now gives ours
    assert str(user_folder / "pipeline.py") in r.stderr and "rename" in r.stderr


def test_a_users_pipeline_imported_first_is_named(user_folder):
    r = _python(user_folder, "import pipeline\nimport cubecast\n")
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ") and str(user_folder / "pipeline.py") in last
    assert "rename" in last


def test_without_a_shadow_there_is_no_warning(tmp_path):
    r = _python(tmp_path, "import cubecast")
    assert r.returncode == 0 and "PipelineShadowedWarning" not in r.stderr, r.stderr


@pytest.mark.parametrize("pythonpath", [False, True])
def test_the_cubecast_command_works_beside_a_users_pipeline_py(user_folder, pythonpath):
    exe = shutil.which("cubecast", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the cubecast console script is not installed (pip install -e .)")
    env = {**os.environ, **({"PYTHONPATH": "."} if pythonpath else {})}
    r = subprocess.run([exe, "--help"], cwd=user_folder, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "trigger" in r.stdout and "server" in r.stdout


def test_cubecast_imports_without_the_publish_extra(tmp_path):
    from tests.test_first_run import PUBLISH_ONLY

    code = (
        f"import sys\nfor name in {PUBLISH_ONLY!r}:\n    sys.modules[name] = None\n"
        "import cubecast\nprint(cubecast.decode_cube.__name__)\n"
    )
    r = _python(tmp_path, code)
    assert r.returncode == 0 and "decode_cube" in r.stdout, r.stderr[-2000:]
