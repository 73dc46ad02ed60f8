"""Real servers on 127.0.0.1 for the notification tests."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
from quiethttp import QuietHTTPServer


class HttpRecorder:
    """An HTTP server that records requests and answers with a scripted list of statuses."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes, dict[str, str]]] = []
        self.statuses: list[int] = []
        self.hang = 0.0
        self.redirect_to: str | None = None
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                rec.requests.append((self.command, self.path, body, dict(self.headers)))
                if rec.hang:
                    time.sleep(rec.hang)
                status = rec.statuses.pop(0) if rec.statuses else 200
                self.send_response(status)
                if rec.redirect_to and 300 <= status < 400:
                    self.send_header("Location", rec.redirect_to)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_POST = do_GET = _handle  # noqa: N815

            def log_message(self, *args) -> None:
                pass

        self.server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_server():
    srv = HttpRecorder()
    yield srv
    srv.hang = 0
    srv.close()


@pytest.fixture
def blackhole_port():
    """A TCP port that accepts connections (backlog) but never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def closed_port():
    """A port with nothing listening (connection refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port
