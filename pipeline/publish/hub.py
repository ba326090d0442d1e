"""Talking to a HuggingFace dataset repo: the token, the client's errors as one line (never
showing the token), the repo's files and whether one already holds a local file's bytes."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import PublishError
from pipeline.sources.body import network_errors

Digest = Callable[[Path], str]


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _git_blob_sha1(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


HF_TARGET = re.compile(r"^hf://datasets/(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+?)/?$")
HUB_KEEP = {".gitattributes"}  # the hub's own file, not part of the dataset


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


@contextmanager
def hub_errors(target: str, token: str, endpoint: str) -> Iterator[None]:
    """The hub client's errors as one-line :class:`PublishError` s, never showing the token."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise PublishError(f"{target}: the token has no write access (HTTP {status})") from None
        if status in (409, 412):  # parent_commit is no longer the head
            raise PublishError(
                f"{target}: the repo moved since this run read it (another run committed, "
                f"HTTP {status}); nothing was committed by this one, run again"
            ) from None
        raise PublishError(f"{target}: {_scrub(str(exc), token)}") from None
    except (OSError, *network_errors()) as exc:
        if isinstance(exc, network_errors()):
            raise PublishError(
                f"{target}: cannot reach the hub at {endpoint} ({exc.__class__.__name__}: "
                f"{_scrub(str(exc), token)})"
            ) from None
        raise PublishError(f"{target}: {_scrub(str(exc), token)}") from None


def hub_tree(api: Any, repo_id: str, revision: str | None = None) -> dict[str, Any] | None:
    """The repo's files (path -> the client's file entry), or None if there is no repo."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        tree = api.list_repo_tree(repo_id, repo_type="dataset", recursive=True, revision=revision)
        return {f.path: f for f in tree if hasattr(f, "blob_id")}
    except RepositoryNotFoundError:
        return None


def hub_has(have: Any, path: Path, digest: Digest) -> bool:
    """Whether the hub's entry ``have`` holds the bytes of ``path``."""
    if have is None:
        return False
    if have.lfs is not None:
        return bool(have.lfs.sha256 == digest(path))
    return bool(have.blob_id == _git_blob_sha1(path))


def hub_head(api: Any, repo_id: str) -> str | None:
    """The repo's head commit, or None if there is no repo."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return str(api.dataset_info(repo_id).sha)
    except RepositoryNotFoundError:
        return None
