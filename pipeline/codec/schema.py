"""The manifest's JSON Schema, generated from the pydantic model so docs cannot drift.

``python -m pipeline.codec.schema`` rewrites ``docs/manifest.schema.json``; ``--check`` exits 1
when the file differs from the model (the tests run that check).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.codec.manifest import FORMAT, FORMAT_VERSION, Manifest

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "manifest.schema.json"


def manifest_schema() -> dict:
    schema = Manifest.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{FORMAT} manifest, version {FORMAT_VERSION}",
        "description": (
            "manifest.json of one cubecast-encoded cube (see docs/FORMAT.md). Generated from "
            "pipeline.codec.manifest.Manifest by `python -m pipeline.codec.schema`; "
            "do not edit by hand."
        ),
        **{k: v for k, v in schema.items() if k not in ("title", "description")},
    }


def render() -> str:
    return json.dumps(manifest_schema(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[-1]) if args and not args[-1].startswith("-") else SCHEMA_FILE
    text = render()
    if "--check" in args:
        current = path.read_text() if path.is_file() else ""
        if current != text:
            print(f"{path}: out of date; run `python -m pipeline.codec.schema`", file=sys.stderr)
            return 1
        return 0
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    tmp.replace(path)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
