"""A file server on 127.0.0.1 for the download tests, in a thread: serves one body at any path,
honours or ignores ``Range``, cuts transfers short, answers errors; records every request."""

from __future__ import annotations

import http.server
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Behaviour:
    """What the server does; tests change it between requests.

    Attributes:
        body: the file served.
        ranges: answer ``Range`` requests with 206 (else the whole file, 200).
        status: answer every request with this HTTP status and no body (0: serve).
        truncate: requests (counted from the first) whose body is cut to half what its
            Content-Length announces, the connection then closed.
        no_length: send no Content-Length (the body ends when the connection closes).
        endless: after the body, send it again and again (up to ``endless_cap`` bytes in all,
            so that a client that does not stop ends some time); with ``no_length``, a server
            that streams without end.
        endless_cap: bytes an endless body stops at.
        delay: seconds to wait between blocks of the body.
        requests: (path, Range header or None) of every request, in order.
    """

    body: bytes = b""
    ranges: bool = True
    status: int = 0
    truncate: set[int] = field(default_factory=set)
    no_length: bool = False
    endless: bool = False
    endless_cap: int = 1 << 26
    delay: float = 0.0
    requests: list[tuple[str, str | None]] = field(default_factory=list)


class _Handler(http.server.BaseHTTPRequestHandler):
    behaviour: Behaviour

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # the name http.server calls
        b = self.behaviour
        index = len(b.requests)
        asked = self.headers.get("Range")
        b.requests.append((self.path, asked))
        if b.status:
            self.send_response(b.status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", asked or "")
        if b.ranges and match:
            start = int(match.group(1))
            if start >= len(b.body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(b.body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(b.body) - 1}/{len(b.body)}")
        else:
            self.send_response(200)
            self.send_header("Accept-Ranges", "bytes" if b.ranges else "none")
        part = b.body[start:]
        if not b.no_length:
            self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        if index in b.truncate:
            part = part[: len(part) // 2]
        try:
            for i in range(0, len(part), 4096):
                self.wfile.write(part[i : i + 4096])
                if b.delay:
                    self.wfile.flush()
                    time.sleep(b.delay)
            sent = len(part)
            while b.endless and b.body and sent < b.endless_cap:
                self.wfile.write(b.body)
                sent += len(b.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)
        self.close_connection = True


@contextmanager
def serving(behaviour: Behaviour) -> Iterator[str]:
    """Serve ``behaviour`` on 127.0.0.1 at a free port; yields the base URL."""
    handler = type("Handler", (_Handler,), {"behaviour": behaviour})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
