"""A real HTTP server on loopback that serves test artifacts the way real servers misbehave.

Paths (each serving `ArtifactServer.files[name]`):
    /plain/<name>      Content-Length and Range support (206 answers)
    /nolength/<name>   no Content-Length: the body ends when the connection closes
    /flaky/<name>      the first `flaky_failures` answers send half the body and drop the connection
    /slow/<name>       sends the body in small pieces with pauses
    /status/<code>     always answers with that HTTP status
Every request is recorded in `requests` as (path, Range header or None).
"""

from __future__ import annotations

import http.server
import threading
import time


class ArtifactServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.flaky_failures = 2
        self._flaky_count = 0
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                with server._lock:
                    server.requests.append((self.path, self.headers.get("Range")))
                mode, _, name = self.path.lstrip("/").partition("/")
                if mode == "status":
                    self.send_response(int(name))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.files.get(name)
                if body is None:
                    self.send_error(404, "no such artifact")
                    return
                getattr(self, f"_{mode}")(body)

            def _ranged(self, body):
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return None
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                return body[start:]

            def _plain(self, body):
                part = self._ranged(body)
                if part is not None:
                    self.wfile.write(part)

            def _nolength(self, body):
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def _flaky(self, body):
                with server._lock:
                    server._flaky_count += 1
                    fail = server._flaky_count <= server.flaky_failures
                part = self._ranged(body)
                if part is None:
                    return
                if fail:
                    self.wfile.write(part[: len(part) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(part)

            def _slow(self, body):
                part = self._ranged(body)
                if part is None:
                    return
                step = max(1, len(part) // 10)
                for i in range(0, len(part), step):
                    self.wfile.write(part[i:i + step])
                    self.wfile.flush()
                    time.sleep(0.1)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def gets(self, path: str) -> list[str | None]:
        """The Range headers of every request for `path`."""
        return [rng for p, rng in self.requests if p == path]
