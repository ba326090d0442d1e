"""Which :class:`~pipeline.publish.remote.Remote` a target string names."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import PublishError
from pipeline.publish.folder_remote import FolderRemote
from pipeline.publish.hub import HF_TARGET
from pipeline.publish.hub_remote import HubRemote
from pipeline.publish.remote import Remote


def open_remote(target: str, private: bool = False) -> Remote:
    """``hf://datasets/ORG/NAME``, a local folder, or any fsspec URL."""
    m = HF_TARGET.match(target)
    if m:
        return HubRemote(m["repo"], private)
    if target.startswith("hf://"):
        raise PublishError(f"{target}: expected hf://datasets/ORG/NAME")
    if "://" not in target:
        target = str(Path(target).resolve())
    return FolderRemote(target)
