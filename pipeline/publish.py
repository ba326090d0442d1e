"""Publishing a verified dataset folder: to a HuggingFace dataset repo, a local folder or any
fsspec URL. Only changed files move; nothing moves unless verification passed.

On the hub, LFS files are pre-uploaded one by one as they are ready and a single commit is
made at the end; a re-run whose files are all present uploads nothing and makes no commit,
and an interrupted run resumes (the LFS batch endpoint skips objects already stored).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from pipeline.encoded import file_sha256
from pipeline.errors import PublishError
from pipeline.verify import REPORT_JSON, Verification

log = logging.getLogger(__name__)
INDEX_FILE = ".cubecast-index.json"
_HF = re.compile(r"^hf://datasets/(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+?)/?$")


@dataclass
class PublishResult:
    target: str
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0
    commit: str | None = None
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would upload" if self.dry_run else "uploaded"
        commit = f", commit {self.commit[:10]}" if self.commit else ", no commit"
        return (
            f"{self.target}: {verb} {len(self.uploaded)} files ({self.bytes_uploaded:,} bytes), "
            f"{len(self.unchanged)} unchanged{'' if self.dry_run else commit}"
        )


def publishable_files(folder: Path) -> list[str]:
    """Shards first (so they are uploaded while later files are still being written), then
    the index, report and card last. Work folders and partial files stay behind."""
    files = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        hidden = any(part.startswith(".") and part != ".tacocat" for part in rel.split("/"))
        if p.is_file() and not hidden and not rel.endswith(".part"):
            files.append(rel)

    def order(rel: str) -> tuple[int, str]:
        if rel.endswith(".tacozip"):
            return 0, rel
        if rel.startswith(".tacocat/"):
            return 1, rel
        return (3 if rel == "README.md" else 2), rel

    return sorted(files, key=order)


Digest = Callable[[Path], str]


def require_verified(folder: Path, digest: Digest = file_sha256) -> Verification:
    if not (folder / REPORT_JSON).is_file():
        raise PublishError(f"{folder}: no {REPORT_JSON}; run `cubecast verify` before publishing")
    verification = Verification.read(folder)
    if not verification.passed:
        raise PublishError(
            f"{folder}: verification failed, nothing published. {verification.summary()}"
        )
    for shard in sorted(folder.glob("*.tacozip")):
        if verification.shards.get(shard.name) != digest(shard):
            raise PublishError(
                f"{shard}: not the shard that was verified (changed or new since "
                "verification); run `cubecast verify` again"
            )
    return verification


def _git_blob_sha1(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


# -- fsspec (local folders included) ------------------------------------------------------
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
    result = PublishResult(target, dry_run=dry_run)
    index_path = f"{root}/{INDEX_FILE}"
    try:
        remote = json.loads(fs.cat_file(index_path)) if fs.exists(index_path) else {}
    except Exception as exc:  # a target we cannot read is a target we cannot publish to
        raise PublishError(f"{target}: cannot read ({exc})") from exc
    index: dict[str, dict] = {}
    for rel in files:
        path = folder / rel
        entry = {"sha256": digest(path), "size": path.stat().st_size}
        index[rel] = entry
        dest = f"{root}/{rel}"
        if remote.get(rel) == entry and fs.exists(dest) and fs.size(dest) == entry["size"]:
            result.unchanged.append(rel)
            continue
        result.uploaded.append(rel)
        result.bytes_uploaded += entry["size"]
        if dry_run:
            continue
        progress(rel)
        try:
            fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
            tmp = f"{dest}.part"
            fs.put_file(str(path), tmp)
            fs.mv(tmp, dest)
        except Exception as exc:  # each backend has its own errors
            raise PublishError(f"{target}: cannot write {rel} ({exc})") from exc
    if not dry_run and (result.uploaded or remote != index):
        tmp = f"{index_path}.part"
        with fs.open(tmp, "w") as f:
            f.write(json.dumps(index, indent=1))
        fs.mv(tmp, index_path)
    return result


# -- HuggingFace hub ----------------------------------------------------------------------
def hub_token() -> str:
    token = os.environ.get("HF_TOKEN")
    if not token:
        from huggingface_hub import get_token

        token = get_token()
    if not token:
        raise PublishError(
            "no HuggingFace token: set HF_TOKEN or run `hf auth login` to publish to the hub"
        )
    return token


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
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    token = hub_token()
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    target = f"hf://datasets/{repo_id}"
    result = PublishResult(target, dry_run=dry_run)
    try:
        try:
            remote = {
                f.path: f
                for f in api.list_repo_tree(repo_id, repo_type="dataset", recursive=True)
                if hasattr(f, "blob_id")
            }
        except RepositoryNotFoundError:
            remote = {}
            if not dry_run:
                api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        ops = []
        for rel in files:
            path = folder / rel
            have = remote.get(rel)
            if have is not None:
                same = (
                    have.lfs.sha256 == digest(path)
                    if have.lfs is not None
                    else have.blob_id == _git_blob_sha1(path)
                )
                if same:
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
        if ops:
            info = api.create_commit(
                repo_id, operations=ops, commit_message=message, repo_type="dataset"
            )
            result.commit = info.oid
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise PublishError(f"{target}: the token has no write access (HTTP {status})") from None
        raise PublishError(f"{target}: {_scrub(str(exc), token)}") from None
    except OSError as exc:
        raise PublishError(f"{target}: {_scrub(str(exc), token)}") from None
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
