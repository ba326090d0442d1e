"""A small HuggingFace Hub stand-in on 127.0.0.1 for the real ``huggingface_hub`` client.

huggingface.co is unreachable from the test machines, so this implements just the endpoints
the client calls on the LFS path (``HF_HUB_DISABLE_XET=1``): repo create, tree, paths-info,
preupload, LFS batch + upload, validate-yaml, commit and resolve. It checks the bearer
token, stores files in memory and counts uploaded bytes and commits.
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


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)  # paths stored as LFS
    commits: list[str] = field(default_factory=list)


class FakeHub:
    LFS_THRESHOLD = 10_000

    def __init__(self, token: str, read_only_token: str = "hf_readonly") -> None:
        self.token = token
        self.read_only_token = read_only_token
        self.repos: dict[str, Repo] = {}
        self.objects: dict[str, bytes] = {}  # LFS store by sha256
        self.uploaded_bytes = 0
        self.requests: list[str] = []
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
                    items = [
                        self._entry(p, d, p in repo.lfs)
                        for p, d in sorted(repo.files.items())
                        if not prefix or p.startswith(prefix + "/")
                    ]
                    return self._send(200, items)
                m = re.match(r"^/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", url.path)
                if m:
                    repo = hub.repos.get(unquote(m[1]))
                    data = repo.files.get(unquote(m[3])) if repo else None
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
                        return self._send(409, {"error": "You already created this repo"})
                    private = p.get("private") or p.get("visibility") == "private"
                    hub.repos[repo_id] = Repo(private=bool(private))
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
                for line in body.splitlines():
                    item = json.loads(line)
                    v = item["value"]
                    if item["key"] == "file":
                        repo.files[v["path"]] = base64.b64decode(v["content"])
                        repo.lfs.discard(v["path"])
                    elif item["key"] == "lfsFile":
                        if v["oid"] not in hub.objects:
                            return self._send(400, {"error": f"LFS object {v['oid']} missing"})
                        repo.files[v["path"]] = hub.objects[v["oid"]]
                        repo.lfs.add(v["path"])
                    elif item["key"] == "deletedFile":
                        repo.files.pop(v["path"], None)
                oid = hashlib.sha1(body + str(len(repo.commits)).encode()).hexdigest()
                repo.commits.append(oid)
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
