"""Publishing a verified dataset folder: to a HuggingFace dataset repo, a local folder or any
fsspec URL. Only changed files move; nothing moves unless verification passed.

The target becomes a mirror of exactly the files ``verification.json`` recorded: a file
changed, added or deleted since verification stops the publish, and files that an earlier
layout left on the target (old ``_partNNNN`` shards, a stale ``.tacocat``) are deleted.

On the hub, LFS files are pre-uploaded one by one as they are ready and a single commit
(additions and deletions) is made at the end; a re-run whose files are all present uploads
nothing and makes no commit, and an interrupted run resumes (the LFS batch endpoint skips
objects already stored). On a folder or fsspec target each file is written under a
temporary name, renamed, and recorded in the target's index at once, so a killed publish
resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from pipeline.codec.encoded import file_sha256
from pipeline.errors import PublishError
from pipeline.publish.hub import HF_TARGET as _HF
from pipeline.publish.hub import (
    HUB_KEEP,
    Digest,
    hub_errors,
    hub_has,
    hub_head,
    hub_token,
    hub_tree,
)
from pipeline.publish.lease import target_lease
from pipeline.publish.verify import REPORT_JSON, Verification, dataset_files
from pipeline.sources.hub_auth import hub_endpoint

log = logging.getLogger(__name__)
INDEX_FILE = ".cubecast-index.json"


@dataclass
class PublishResult:
    target: str
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # left on the target by an earlier layout
    bytes_uploaded: int = 0
    commit: str | None = None
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would upload" if self.dry_run else "uploaded"
        commit = f", commit {self.commit[:10]}" if self.commit else ", no commit"
        gone = ""
        if self.deleted:
            gone = f", {'would delete' if self.dry_run else 'deleted'} {len(self.deleted)} stale"
        return (
            f"{self.target}: {verb} {len(self.uploaded)} files ({self.bytes_uploaded:,} bytes), "
            f"{len(self.unchanged)} unchanged{gone}{'' if self.dry_run else commit}"
        )


def publishable_files(folder: Path) -> list[str]:
    """Shards first (so they are uploaded while later files are still being written), then
    the index, report and card last. Work folders and partial files stay behind; symbolic
    links are refused (see :func:`pipeline.publish.verify.dataset_files`)."""
    files = dataset_files(folder)

    def order(rel: str) -> tuple[int, str]:
        if rel.endswith(".tacozip"):
            return 0, rel
        if rel.startswith(".tacocat/"):
            return 1, rel
        return (3 if rel == "README.md" else 2), rel

    return sorted(files, key=order)


def require_verified(folder: Path, digest: Digest = file_sha256) -> Verification:
    """The folder's verification, if it passed and the folder holds exactly the files it
    recorded, byte for byte; anything else is refused with the first differences named."""
    if not (folder / REPORT_JSON).is_file():
        raise PublishError(f"{folder}: no {REPORT_JSON}; run `cubecast verify` before publishing")
    verification = Verification.read(folder)
    if not verification.passed:
        raise PublishError(
            f"{folder}: verification failed, nothing published. {verification.summary()}"
        )
    if not verification.files:
        raise PublishError(
            f"{folder / REPORT_JSON}: records no files (written by an older cubecast); run "
            "`cubecast verify` again"
        )
    again = "; run `cubecast verify` again"
    present = [rel for rel in dataset_files(folder) if rel != REPORT_JSON]
    for rel in present:
        if rel not in verification.files:
            kind = "shard" if rel.endswith(".tacozip") else "file"
            raise PublishError(
                f"{folder / rel}: not the {kind} that was verified (new since verification)" + again
            )
        if digest(folder / rel) != verification.files[rel]:
            kind = "shard" if rel.endswith(".tacozip") else "file"
            raise PublishError(
                f"{folder / rel}: not the {kind} that was verified (changed since "
                "verification)" + again
            )
    missing = sorted(set(verification.files) - set(present))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise PublishError(
            f"{folder}: {', '.join(missing[:3])}{more} verified but missing (deleted since "
            "verification)" + again
        )
    return verification


# -- fsspec (local folders included) ------------------------------------------------------
def _same_bytes(fs: Any, dest: str, entry: dict) -> bool:
    """Whether ``dest`` on the target already holds the file (size, then SHA-256): a publish
    killed after a rename but before its index write does not upload that file again."""
    try:
        if not fs.exists(dest) or fs.size(dest) != entry["size"]:
            return False
        h = hashlib.sha256()
        with fs.open(dest, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest() == entry["sha256"]
    except Exception:  # unreadable: upload it
        return False


def _stale_on_target(fs: Any, root: str, remote: dict, wanted: set[str]) -> list[str]:
    """Files to delete: what an earlier publish recorded, plus any shard or ``.tacocat``
    file on the target (readers would see their samples twice), that is not published now."""
    found = set(remote)
    patterns = (f"{root}/*.tacozip", f"{root}/.tacocat/**", f"{root}/cubecast-index.json")
    for pattern in patterns:
        try:
            hits = fs.glob(pattern)
        except Exception:  # nothing there, or a backend that cannot glob
            continue
        for h in hits:
            rel = str(h).removeprefix(root.rstrip("/") + "/")
            if fs.isfile(h):
                found.add(rel)
    return sorted(found - wanted)


def _read_target_index(fs: Any, index_path: str, target: str) -> dict:
    try:
        remote = json.loads(fs.cat_file(index_path)) if fs.exists(index_path) else {}
    except Exception as exc:  # a target we cannot read is a target we cannot publish to
        raise PublishError(f"{target}: cannot read ({exc})") from exc
    return remote if isinstance(remote, dict) else {}


def _put_atomic(fs: Any, path: Path, dest: str) -> None:
    """Copy ``path`` to ``dest`` under a temporary name, renamed when complete."""
    fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
    tmp = f"{dest}.part"
    fs.put_file(str(path), tmp)
    fs.mv(tmp, dest)


def _delete_stale(fs: Any, root: str, target: str, stale: list[str], forget: Callable) -> None:
    for rel in stale:
        try:
            if fs.exists(f"{root}/{rel}"):
                fs.rm(f"{root}/{rel}")
        except Exception as exc:
            raise PublishError(f"{target}: cannot delete stale {rel} ({exc})") from exc
        forget(rel)
    for d in sorted({rel.rsplit("/", 1)[0] for rel in stale if "/" in rel}, reverse=True):
        try:  # folders an earlier layout left empty (``.tacocat``) go too
            if not fs.ls(f"{root}/{d}"):
                fs.rmdir(f"{root}/{d}")
        except Exception:  # not empty, or a store without folders
            pass


def _publish_fsspec(
    folder: Path,
    files: list[str],
    target: str,
    dry_run: bool,
    progress: Callable[[str], None],
    digest: Digest,
) -> PublishResult:
    import fsspec

    fs, root = fsspec.core.url_to_fs(target)
    root = root.rstrip("/")
    lease = nullcontext() if dry_run else target_lease(fs, root, target)
    with lease:  # one publisher at a time; the target's index is read inside
        return _mirror_fsspec(fs, root, folder, files, target, dry_run, progress, digest)


def _mirror_fsspec(
    fs: Any,
    root: str,
    folder: Path,
    files: list[str],
    target: str,
    dry_run: bool,
    progress: Callable[[str], None],
    digest: Digest,
) -> PublishResult:
    result = PublishResult(target, dry_run=dry_run)
    index_path = f"{root}/{INDEX_FILE}"
    remote = _read_target_index(fs, index_path, target)
    index = dict(remote)  # the progress record: what the target holds, file by file

    def save_index() -> None:
        tmp = f"{index_path}.part"
        with fs.open(tmp, "w") as f:
            f.write(json.dumps(index, indent=1, sort_keys=True))
        fs.mv(tmp, index_path)

    for rel in files:
        path = folder / rel
        entry = {"sha256": digest(path), "size": path.stat().st_size}
        dest = f"{root}/{rel}"
        recorded = remote.get(rel) == entry
        if recorded and fs.exists(dest) and fs.size(dest) == entry["size"]:
            result.unchanged.append(rel)
            continue
        if not recorded and _same_bytes(fs, dest, entry):
            result.unchanged.append(rel)
            if not dry_run:
                index[rel] = entry
                save_index()
            continue
        result.uploaded.append(rel)
        result.bytes_uploaded += entry["size"]
        if dry_run:
            continue
        progress(rel)
        try:
            _put_atomic(fs, path, dest)
        except Exception as exc:  # each backend has its own errors
            raise PublishError(f"{target}: cannot write {rel} ({exc})") from exc
        index[rel] = entry
        save_index()
    result.deleted = _stale_on_target(fs, root, remote, set(files))
    if dry_run:
        return result
    _delete_stale(
        fs, root, target, result.deleted, lambda rel: (index.pop(rel, None), save_index())
    )
    if index != remote or not fs.exists(index_path):
        save_index()
    return result


def _publish_hub(
    folder: Path,
    files: list[str],
    repo_id: str,
    dry_run: bool,
    private: bool,
    message: str,
    progress: Callable[[str], None],
    digest: Digest,
) -> PublishResult:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    token = hub_token()
    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    target = f"hf://datasets/{repo_id}"
    result = PublishResult(target, dry_run=dry_run)
    with hub_errors(target, token, endpoint):
        head = hub_head(api, repo_id)
        if head is None and not dry_run:
            api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            head = hub_head(api, repo_id)
        remote = (hub_tree(api, repo_id, revision=head) or {}) if head else {}
        ops: list[Any] = []
        for rel in files:
            path = folder / rel
            if hub_has(remote.get(rel), path, digest):
                result.unchanged.append(rel)
                continue
            result.uploaded.append(rel)
            result.bytes_uploaded += path.stat().st_size
            if dry_run:
                continue
            progress(rel)
            op = CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(path))
            api.preupload_lfs_files(repo_id, additions=[op], repo_type="dataset")
            ops.append(op)
        # the repo mirrors the folder: what an earlier layout left goes, in the same commit
        result.deleted = sorted(p for p in remote if p not in set(files) and p not in HUB_KEEP)
        if not dry_run:
            ops += [CommitOperationDelete(path_in_repo=p) for p in result.deleted]
        if ops:
            # the revision the comparison was made against: a publish that ran meanwhile
            # makes the hub refuse this commit (HTTP 412) instead of mixing two datasets
            info = api.create_commit(
                repo_id,
                operations=ops,
                commit_message=message,
                repo_type="dataset",
                parent_commit=head,
            )
            result.commit = info.oid
    return result


def publish(
    folder: str | os.PathLike[str],
    target: str,
    *,
    dry_run: bool = False,
    private: bool = False,
    message: str = "Publish dataset with cubecast",
    progress: Callable[[str], None] | None = None,
) -> PublishResult:
    """Publish ``folder`` (shards, report, card) to ``target`` after checking verification.

    ``target``: ``hf://datasets/ORG/NAME``, a local path, or any fsspec URL.
    """
    folder = Path(folder)
    digest = cache(file_sha256)  # shards are hashed once, for the check and the comparison
    require_verified(folder, digest)
    files = publishable_files(folder)
    if not any(f.endswith(".tacozip") for f in files):
        raise PublishError(f"{folder}: no .tacozip shards to publish")
    report = progress or (lambda rel: log.info("uploading %s", rel))
    m = _HF.match(target)
    if m:
        return _publish_hub(folder, files, m["repo"], dry_run, private, message, report, digest)
    if target.startswith("hf://"):
        raise PublishError(f"{target}: expected hf://datasets/ORG/NAME")
    if "://" not in target:
        target_path = Path(target).resolve()
        if target_path == folder.resolve():
            raise PublishError(f"{target}: target is the folder being published")
        target = str(target_path)
    return _publish_fsspec(folder, files, target, dry_run, report, digest)
