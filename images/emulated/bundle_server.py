"""The update agent's bundle server for the emulated gateway's tests, on the test host.

An HTTP/1.1 server on 127.0.0.1 (the guest reaches it as 10.0.2.2 through QEMU's user network)
that serves files by name with what a real bundle server does for the agent's resumable
download and for RAUC's streaming: `Range: bytes=N-` and `bytes=N-M` answered 206, an ETag and
`If-Range`, 416 past the end. The test
controls it to make the failures a metered field link has:

  cut_after(n)   the next response sends n body bytes and then closes the connection; with
                 then_refuse, every request after it is refused (below)
  refuse(True)   every request is answered 503 until refuse(False) (the link is down)

and reads what went over the wire: `requests` lists (path, first byte asked, body bytes sent).
"""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
from pathlib import Path


class BundleServer:
    def __init__(self) -> None:
        self.files: dict[str, Path] = {}
        self.etags: dict[str, str] = {}
        self.requests: list[tuple[str, int, int]] = []
        self._cut: int | None = None
        self._refuse = False
        self._refuse_after_cut = False
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args) -> None:  # the test logs what matters
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server._serve(self)

            def do_HEAD(self) -> None:  # noqa: N802
                server._serve(self, head=True)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, name: str, path: Path) -> str:
        """Serve `path` as /name; returns the URL the gateway uses."""
        self.files[name] = path
        # A content ETag, as a static file server's would change with the file.
        self.etags[name] = '"' + hashlib.sha256(f"{path.stat().st_size}:{path.stat().st_mtime_ns}".encode()).hexdigest()[:16] + '"'
        return f"http://10.0.2.2:{self.port}/{name}"

    def cut_after(self, n: int, then_refuse: bool = False) -> None:
        with self._lock:
            self._cut = n
            self._refuse_after_cut = then_refuse

    def refuse(self, on: bool) -> None:
        with self._lock:
            self._refuse = on

    def sent(self, name: str, since: int = 0) -> int:
        """Body bytes sent for /name by the requests from index `since` on."""
        return sum(b for p, _, b in self.requests[since:] if p == name)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _serve(self, h: http.server.BaseHTTPRequestHandler, head: bool = False) -> None:
        name = h.path.lstrip("/")
        with self._lock:
            refuse, cut = self._refuse, self._cut
        if refuse:
            self._reply(h, 503, b"link down (test)\n")
            return
        path = self.files.get(name)
        if path is None:
            self._reply(h, 404, b"no such bundle\n")
            return
        size = path.stat().st_size
        etag = self.etags[name]
        start, end = 0, size  # end exclusive
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range", ""))
        if m and h.headers.get("If-Range", etag) == etag:
            start = int(m.group(1))
            if m.group(2):
                end = min(int(m.group(2)) + 1, size)
            if start >= size or end <= start:
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{size}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
        ranged = m is not None and (start > 0 or end < size)
        h.send_response(206 if ranged else 200)
        if ranged:
            h.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        h.send_header("Content-Length", str(end - start))
        h.send_header("ETag", etag)
        h.send_header("Accept-Ranges", "bytes")
        h.end_headers()
        if head:
            return
        if cut is not None:
            with self._lock:
                self._cut = None
                self._refuse = self._refuse_after_cut
        budget = end - start if cut is None else min(cut, end - start)
        sent = 0
        try:
            with path.open("rb") as f:
                f.seek(start)
                while sent < budget:
                    chunk = f.read(min(256 * 1024, budget - sent))
                    if not chunk:
                        break
                    h.wfile.write(chunk)
                    sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with self._lock:
                self.requests.append((name, start, sent))
        if cut is not None:
            h.close_connection = True
            h.wfile.flush()
            h.connection.shutdown(2)

    @staticmethod
    def _reply(h: http.server.BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
