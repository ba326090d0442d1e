"""A small HuggingFace Hub stand-in on 127.0.0.1 for the real ``huggingface_hub`` client.

huggingface.co is unreachable from the test machines, so this implements just the endpoints
the client calls on the LFS path (``HF_HUB_DISABLE_XET=1``): repo create, repo info, tree,
paths-info, preupload, LFS batch + upload, validate-yaml, commit and resolve. It checks the
bearer token, stores files in memory, counts uploaded bytes and commits, and keeps every
revision (tree and resolve at a commit id work as on the hub).

Like the hub, a new repo starts with one commit (``.gitattributes``), and a commit that
names a ``parentCommit`` which is not the branch head is refused with HTTP 412 ("A commit
has happened since"): the hub's promise behind ``create_commit(parent_commit=...)``. Commits
are applied under a lock, one at a time, as the hub serialises them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

GITATTRIBUTES = b"*.tacozip filter=lfs diff=lfs merge=lfs -text\n"


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)  # paths stored as LFS
    commits: list[str] = field(default_factory=list)
    history: dict[str, tuple[dict[str, bytes], set[str]]] = field(default_factory=dict)

    @property
    def head(self) -> str | None:
        return self.commits[-1] if self.commits else None

    def record(self, oid: str) -> None:
        self.commits.append(oid)
        self.history[oid] = (dict(self.files), set(self.lfs))

    def at(self, revision: str) -> tuple[dict[str, bytes], set[str]] | None:
        """Files and LFS paths at a branch name or a commit id (or its 7+ char prefix)."""
        if revision == "main" or (self.head and self.head.startswith(revision)):
            return self.files, self.lfs  # tests may edit the head's files in place
        hits = [oid for oid in self.history if oid.startswith(revision) and len(revision) >= 7]
        return self.history[hits[0]] if len(hits) == 1 else None


class FakeHub:
    LFS_THRESHOLD = 10_000

    def __init__(self, token: str, read_only_token: str = "hf_readonly") -> None:
        self.token = token
        self.read_only_token = read_only_token
        self.repos: dict[str, Repo] = {}
        self.objects: dict[str, bytes] = {}  # LFS store by sha256
        self.uploaded_bytes = 0
        self.requests: list[str] = []
        self.refused_commits = 0  # commits refused for a stale parent
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            # -- helpers ------------------------------------------------------------
            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _send(self, status: int, payload=None, headers=None, raw: bytes | None = None):
                data = raw if raw is not None else json.dumps(payload or {}).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _auth(self, write: bool) -> bool:
                got = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
                if got == hub.token or (got == hub.read_only_token and not write):
                    return True
                status = 403 if got == hub.read_only_token else 401
                self._send(status, {"error": "Invalid credentials"})
                return False

            def _repo(self, repo_id: str) -> Repo | None:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._send(
                        404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
                    )
                return repo

            def _entry(self, path: str, data: bytes, lfs: bool) -> dict:
                oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                entry = {"type": "file", "path": path, "size": len(data), "oid": oid}
                if lfs:
                    sha = hashlib.sha256(data).hexdigest()
                    entry["lfs"] = {"oid": sha, "size": len(data), "pointerSize": 130}
                return entry

            # -- routes -------------------------------------------------------------
            def do_GET(self):
                hub.requests.append(f"GET {self.path}")
                url = urlparse(self.path)
                m = re.match(r"^/api/datasets/([^/]+/[^/]+)/tree/([^/]+)(/.*)?$", url.path)
                if m:
                    if not self._auth(write=False):
                        return
                    repo = self._repo(unquote(m[1]))
                    if repo is None:
                        return
                    prefix = unquote(m[3] or "").strip("/")
                    with hub.lock:
                        snap = repo.at(unquote(m[2]))
                    if snap is None:
                        return self._send(
                            404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"}
                        )
                    files, lfs = snap
                    items = [
                        self._entry(p, d, p in lfs)
                        for p, d in sorted(files.items())
                        if not prefix or p.startswith(prefix + "/")
                    ]
                    return self._send(200, items)
                m = re.match(r"^/api/datasets/([^/]+/[^/]+?)(?:/revision/([^/]+))?$", url.path)
                if m:
                    if not self._auth(write=False):
                        return
                    repo = self._repo(unquote(m[1]))
                    if repo is None:
                        return
                    with hub.lock:
                        sha = repo.head if not m[2] or m[2] == "main" else m[2]
                        snap = repo.at(sha) if sha else None
                    if snap is None:
                        return self._send(
                            404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"}
                        )
                    siblings = [{"rfilename": p} for p in sorted(snap[0])]
                    payload = {"id": unquote(m[1]), "sha": sha, "private": repo.private}
                    return self._send(200, {**payload, "siblings": siblings})
                m = re.match(r"^/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", url.path)
                if m:
                    repo = hub.repos.get(unquote(m[1]))
                    with hub.lock:
                        snap = repo.at(unquote(m[2])) if repo else None
                    data = snap[0].get(unquote(m[3])) if snap else None
                    if data is None:
                        return self._send(
                            404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}
                        )
                    rng = self.headers.get("Range")
                    if rng:
                        a, b = re.match(r"bytes=(\d+)-(\d*)", rng).groups()
                        end = int(b) if b else len(data) - 1
                        return self._send(
                            206,
                            raw=data[int(a) : end + 1],
                            headers={"Content-Range": f"bytes {a}-{end}/{len(data)}"},
                        )
                    return self._send(200, raw=data)
                self._send(404, {"error": f"no route {url.path}"})

            def do_HEAD(self):
                url = urlparse(self.path)
                m = re.match(r"^/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", url.path)
                repo = hub.repos.get(unquote(m[1])) if m else None
                data = repo.files.get(unquote(m[3])) if repo else None
                self.send_response(200 if data is not None else 404)
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()

            def do_PUT(self):
                hub.requests.append(f"PUT {self.path}")
                m = re.match(r"^/lfs-upload/([0-9a-f]{64})$", self.path)
                body = self._body()
                if not m or hashlib.sha256(body).hexdigest() != m[1]:
                    return self._send(400, {"error": "bad upload"})
                hub.objects[m[1]] = body
                hub.uploaded_bytes += len(body)
                self._send(200, {})

            def do_POST(self):
                hub.requests.append(f"POST {self.path}")
                url = urlparse(self.path)
                body = self._body()
                if url.path == "/api/repos/create":
                    if not self._auth(write=True):
                        return
                    p = json.loads(body)
                    repo_id = (
                        f"{p['organization']}/{p['name']}" if p.get("organization") else p["name"]
                    )
                    if repo_id in hub.repos:
                        return self._send(  # the hub names the repo: create_repo reads it
                            409,
                            {
                                "error": "You already created this repo",
                                "url": f"{hub.url}/datasets/{repo_id}",
                            },
                        )
                    private = p.get("private") or p.get("visibility") == "private"
                    repo = Repo(private=bool(private), files={".gitattributes": GITATTRIBUTES})
                    repo.record(hashlib.sha1(f"init {repo_id}".encode()).hexdigest())
                    hub.repos[repo_id] = repo
                    return self._send(200, {"url": f"{hub.url}/datasets/{repo_id}"})
                if url.path == "/api/validate-yaml":
                    return self._send(200, {"errors": [], "warnings": []})
                m = re.match(
                    r"^/api/datasets/([^/]+/[^/]+)/(preupload|commit|paths-info)/(.+)$", url.path
                )
                if m:
                    if not self._auth(write=m[2] != "paths-info"):
                        return
                    repo = self._repo(unquote(m[1]))
                    if repo is None:
                        return
                    return getattr(self, f"_{m[2].replace('-', '_')}")(repo, unquote(m[1]), body)
                m = re.match(r"^/datasets/([^/]+/[^/]+)\.git/info/lfs/objects/batch$", url.path)
                if m:
                    if not self._auth(write=True):
                        return
                    p = json.loads(body)
                    objects = []
                    for o in p["objects"]:
                        item = {"oid": o["oid"], "size": o["size"]}
                        if o["oid"] not in hub.objects:
                            item["actions"] = {
                                "upload": {"href": f"{hub.url}/lfs-upload/{o['oid']}"}
                            }
                        objects.append(item)
                    return self._send(200, {"transfer": "basic", "objects": objects})
                self._send(404, {"error": f"no route {url.path}"})

            def _preupload(self, repo: Repo, repo_id: str, body: bytes):
                files = []
                for f in json.loads(body)["files"]:
                    sample = base64.b64decode(f["sample"])
                    binary = b"\0" in sample or f["size"] > hub.LFS_THRESHOLD
                    files.append(
                        {
                            "path": f["path"],
                            "uploadMode": "lfs" if binary else "regular",
                            "shouldIgnore": False,
                        }
                    )
                self._send(200, {"files": files})

            def _paths_info(self, repo: Repo, repo_id: str, body: bytes):
                try:
                    paths = json.loads(body)["paths"]
                except ValueError:
                    paths = parse_qs(body.decode()).get("paths", [])
                out = [
                    self._entry(p, repo.files[p], p in repo.lfs) for p in paths if p in repo.files
                ]
                self._send(200, out)

            def _commit(self, repo: Repo, repo_id: str, body: bytes):
                with hub.lock:  # the hub applies one commit at a time
                    return self._commit_locked(repo, repo_id, body)

            def _commit_locked(self, repo: Repo, repo_id: str, body: bytes):
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                header = next((i["value"] for i in lines if i["key"] == "header"), {})
                parent = header.get("parentCommit")
                if parent and not (repo.head or "").startswith(parent):
                    hub.refused_commits += 1
                    return self._send(
                        412, {"error": "A commit has happened since. Please refresh and try again."}
                    )
                for line in lines:
                    if line["key"] != "lfsFile":
                        continue
                    if line["value"]["oid"] not in hub.objects:
                        return self._send(
                            400, {"error": f"LFS object {line['value']['oid']} missing"}
                        )
                for item in lines:
                    v = item["value"]
                    if item["key"] == "file":
                        repo.files[v["path"]] = base64.b64decode(v["content"])
                        repo.lfs.discard(v["path"])
                    elif item["key"] == "lfsFile":
                        repo.files[v["path"]] = hub.objects[v["oid"]]
                        repo.lfs.add(v["path"])
                    elif item["key"] == "deletedFile":
                        repo.files.pop(v["path"], None)
                oid = hashlib.sha1(body + str(len(repo.commits)).encode()).hexdigest()
                repo.record(oid)
                self._send(
                    200,
                    {
                        "commitUrl": f"{hub.url}/datasets/{repo_id}/commit/{oid}",
                        "commitOid": oid,
                        "success": True,
                    },
                )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
