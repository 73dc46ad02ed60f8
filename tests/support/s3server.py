"""A real S3-protocol server for tests: moto's server mode on 127.0.0.1 (a random port), and a
small HTTP proxy in front of it that fails or delays chosen requests (moto injects no faults).

The production client (obstore) talks HTTP to them; nothing in-process is mocked.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from quiethttp import QuietHTTPServer

# a recognisable secret: tests assert it never appears in any output
SECRET_KEY = "dsbSECRETkey+Never+Print+This/42xyz"
ACCESS_KEY = "AKIADSBACKUPTESTKEY1"


class MotoServer:
    def __init__(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, self.port = self._server.get_host_and_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.running = True

    def client(self, endpoint: str | None = None):
        import boto3

        return boto3.client("s3", endpoint_url=endpoint or self.endpoint, region_name="us-east-1",
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def stop(self) -> None:
        if self.running:
            self.running = False
            self._server.stop()


@dataclass
class Rule:
    """Requests whose method and URL match get `status` (or wait `delay` s) `times` times;
    `body` replaces the default error body; with `forward` the request reaches the server
    first and its answer is replaced (an answer lost after the server acted); with `cut` the
    server's answer is sent with half its body, then the connection is closed. `range` limits
    the rule to requests whose Range header starts with it."""

    method: str
    contains: str
    times: int
    status: int | None = 503
    delay: float = 0.0
    hits: int = 0
    body: bytes | None = None
    forward: bool = False
    cut: bool = False
    range: str | None = None


@dataclass
class FaultProxy:
    """Forwards to `upstream` (host, port); applies the first matching rule with uses left.
    `seen` records each request's method and path, `headers` its headers as received (and
`body_sha256` its body's hash); with
    `tls` (a server context) it is an https endpoint in front of the plain-http upstream."""

    upstream: tuple[str, int]
    rules: list[Rule] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    body_sha256: list[str] = field(default_factory=list)  # of each request's body as received
    down: bool = False
    tls: ssl.SSLContext | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def _any(self) -> None:
                if proxy.down:  # gone: kept-alive connections are cut, no answer
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                line = f"{self.command} {self.path}"
                got = {k.lower(): v for k, v in self.headers.items()}
                digest = hashlib.sha256(body).hexdigest()
                with proxy.lock:  # the three lists stay aligned under concurrent requests
                    proxy.seen.append(line)
                    proxy.headers.append(got)
                    proxy.body_sha256.append(digest)
                for r in proxy.rules:
                    if r.method == self.command and r.contains in self.path and r.hits < r.times \
                            and (r.range is None
                                 or self.headers.get("Range", "").startswith(r.range)):
                        r.hits += 1
                        if r.delay:
                            time.sleep(r.delay)
                        if r.cut:
                            self._answer(*self._upstream(body), cut=True)
                            return
                        if r.forward:
                            self._upstream(body)
                        if r.status is not None:
                            msg = r.body if r.body is not None else \
                                b"<Error><Code>SlowDown</Code></Error>"
                            self.send_response(r.status)
                            self.send_header("Content-Length", str(len(msg)))
                            self.end_headers()
                            if self.command != "HEAD":
                                self.wfile.write(msg)
                            return
                        break
                self._answer(*self._upstream(body))

            def _answer(self, resp: http.client.HTTPResponse, data: bytes,
                        cut: bool = False) -> None:
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length",
                                         "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if not cut:
                    self.wfile.write(data)
                    return
                self.wfile.write(data[:len(data) // 2])  # half the body, then the line is cut
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            def _upstream(self, body: bytes) -> tuple[http.client.HTTPResponse, bytes]:
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "transfer-encoding")}
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    return resp, resp.read()
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self._httpd = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        if self.tls is not None:  # the handshake runs in the request's thread, on first read
            self._httpd.socket = self.tls.wrap_socket(self._httpd.socket, server_side=True,
                                                      do_handshake_on_connect=False)
        self.port = self._httpd.server_address[1]
        scheme = "https" if self.tls is not None else "http"
        self.endpoint = f"{scheme}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.down = True
        self._httpd.shutdown()
        self._httpd.server_close()
