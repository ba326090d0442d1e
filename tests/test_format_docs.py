"""docs/FORMAT.md and docs/manifest.schema.json describe the manifest the code writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from pipeline.codec.manifest import Manifest
from pipeline.codec.schema import SCHEMA_FILE, manifest_schema

ROOT = Path(__file__).resolve().parents[1]


def test_schema_file_is_current():
    """Fails after a manifest model change until `python -m pipeline.codec.schema` is run."""
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.codec.schema", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(SCHEMA_FILE.read_text()) == manifest_schema()


def test_a_written_manifest_validates_against_the_schema(s2cube):
    from pipeline import EncodeOptions, encode_cube

    enc = encode_cube(s2cube, EncodeOptions(crf=12))
    jsonschema.validate(json.loads(enc.manifest.to_json()), json.loads(SCHEMA_FILE.read_text()))


@pytest.mark.parametrize("model", ["Manifest", "StreamInfo", "ChannelInfo", "VariableInfo"])
def test_format_doc_names_every_manifest_field(model):
    """A field added to the manifest must be explained in FORMAT.md too."""
    import pipeline.codec.manifest as m

    doc = (ROOT / "docs" / "FORMAT.md").read_text()
    fields = getattr(m, model).model_fields
    missing = [f for f in fields if f"`{f}`" not in doc]
    assert not missing, f"docs/FORMAT.md does not mention {model} fields {missing}"
    assert Manifest.model_fields  # the model the schema comes from
