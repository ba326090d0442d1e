"""A tiny HTTP server on 127.0.0.1 that honours Range requests and records them.

``drop_once[name] = n`` makes the next GET of that file send ``n`` bytes of the body and
then cut the connection, as a flaky network would.
"""

from __future__ import annotations

import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class RangeServer:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.ranges: list[tuple[str, int, int]] = []
        self.drop_once: dict[str, int] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *a, **k):
                super().__init__(*a, directory=str(server.root), **k)

            def log_message(self, *a):
                pass

            def do_GET(self):
                path = server.root / self.path.lstrip("/").split("?")[0]
                server.requests.append((self.path, dict(self.headers)))
                rng = self.headers.get("Range")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                if rng:
                    m = re.match(r"bytes=(\d+)-(\d*)", rng)
                    start = int(m.group(1))
                    end = int(m.group(2)) if m.group(2) else len(data) - 1
                    server.ranges.append((path.name, start, end + 1))
                    body = data[start : end + 1]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                else:
                    server.ranges.append((path.name, 0, len(data)))
                    body = data
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.drop_once.pop(path.name, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
