"""Encoded cubes staged on disk for packing, and samples carried out of a published shard
back into staging (to re-pack them without encoding them again)."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.codec.encoded import MANIFEST_FILE
from pipeline.confine import confined, safe_name
from pipeline.errors import CorruptStreamError, CubecastError


def child_id(filename: str) -> str:
    """TACO ids allow no dots: ``rgb.mkv`` -> ``rgb_mkv``."""
    return filename.replace(".", "_")


SAMPLE_META = "sample.json"
MANIFEST_DIGEST = "manifest_sha256"  # the metadata column with the manifest's SHA-256


@dataclass(frozen=True)
class StagedSample:
    """An encoded cube written to disk with its metadata row, ready to pack.

    Staging keeps memory flat (a shard is packed from files, not from bytes held in RAM)
    and lets separate processes or Dask workers hand samples to the packer by path.
    """

    folder: Path

    @property
    def id(self) -> str:
        return self.folder.name

    def metadata(self) -> dict[str, Any]:
        return json.loads((self.folder / SAMPLE_META).read_text())

    def files(self) -> list[Path]:
        skip = (MANIFEST_FILE, SAMPLE_META)
        rest = sorted(
            p for p in self.folder.iterdir() if p.name not in skip and not p.name.startswith(".")
        )
        return [self.folder / MANIFEST_FILE, *rest]


# columns tacotoolbox and tacoreader add to a row: not part of the sample's own metadata
_TACO_COLUMNS = ("id", "type")


def shard_rows(shard: str | Path) -> dict[str, dict[str, Any]]:
    """The metadata row of every sample of a local shard, as ``sample.json`` holds it."""
    import tacoreader

    table = tacoreader.load(str(shard)).data.to_arrow()
    return {
        row["id"]: {
            k: v for k, v in row.items() if k not in _TACO_COLUMNS and not k.startswith("internal:")
        }
        for row in table.to_pylist()
    }


def restage(shard: str | Path, sample_id: str, row: dict[str, Any], root: Path) -> StagedSample:
    """Copy one sample of a shard into ``root/<id>/`` (children under their file names, the
    metadata ``row`` as ``sample.json``), atomically: packed again, it gives the same bytes
    as the cube staged by the encoder."""
    from pipeline.codec.manifest import Manifest

    dest = confined(root, safe_name(sample_id, "sample id"), "sample id")
    tmp = root / f".{sample_id}.carry"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    prefix = f"DATA/{sample_id}/"
    try:
        with zipfile.ZipFile(shard) as zf:
            raw = zf.read(prefix + child_id(MANIFEST_FILE))
            digest = hashlib.sha256(raw).hexdigest()
            if row.get(MANIFEST_DIGEST) not in (None, "", digest):
                raise CorruptStreamError(
                    f"{shard}:{sample_id}: manifest does not match the SHA-256 its metadata "
                    "row records (corrupt shard)"
                )
            row = {**row, MANIFEST_DIGEST: digest}  # rows of older shards get one
            manifest = Manifest.from_json(raw, source=f"{shard}:{sample_id}")
            (tmp / MANIFEST_FILE).write_bytes(raw)
            names = [s.file for s in manifest.streams]
            names += [manifest.aux.file] if manifest.aux else []
            for name in names:
                with (
                    zf.open(prefix + child_id(name)) as src,
                    open(confined(tmp, name, "stream file"), "wb") as f,
                ):
                    shutil.copyfileobj(src, f, 1 << 20)
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CorruptStreamError(f"{shard}: cannot carry sample {sample_id!r} ({exc})") from None
    except CubecastError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / SAMPLE_META).write_text(json.dumps(row, indent=1, default=str))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return StagedSample(dest)
