"""A loopback HTTP relay that turns a ``200 OK`` carrying a ``Content-Range`` into the
``206 Partial Content`` the protocol requires (benchmarks/s3.py, reads from ``rclone serve s3``).

rclone serve s3 1.75.2 answers every ranged GET with status 200 and the right partial body
and ``Content-Range`` (its S3 library, gofakes3, fixed this upstream in 2026). object_store
(obstore, our client) rightly refuses a 200 to a ranged GET ("Received non-partial response
when range requested"): a 200 may be the whole object. So the benchmark reads from rclone
through this relay; the rows compared with a read (restore, boto3's download) both pass
through it, so both pay its copy.

With ``tls`` (a server context and a client context) it is an https endpoint in front of an
https server (``benchmarks/s3.py --tls``): TLS ends and starts again in the relay.

One request per connection: the relay forwards the request (with ``Connection: close``), rewrites the response's status
line when needed, adds ``Connection: close``, relays exactly ``Content-Length`` bytes of body
(none after a HEAD), and closes. Each connection has its own thread.
"""

from __future__ import annotations

import socket
import ssl
import threading

BUF = 1 << 20


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """(head including the blank line, bytes read past it); b"" head at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        got = sock.recv(65536)
        if not got:
            return b"", data
        data += got
    end = data.index(b"\r\n\r\n") + 4
    return data[:end], data[end:]


def _headers(head: bytes) -> dict[str, str]:
    out = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            k, v = line.split(b":", 1)
            out[k.strip().lower().decode()] = v.strip().decode()
    return out


def _relay(src: socket.socket, dst: socket.socket, first: bytes, length: int | None) -> int:
    """Send `first` then `length` more bytes in all (None: until EOF) from src to dst; returns
    the bytes sent."""
    if first:
        dst.sendall(first)
    sent = len(first)
    left = None if length is None else length - len(first)
    buf = bytearray(BUF)
    view = memoryview(buf)
    while left is None or left > 0:
        n = src.recv_into(view, BUF if left is None else min(BUF, left))
        if not n:
            return sent
        dst.sendall(view[:n])
        sent += n
        if left is not None:
            left -= n
    return sent


def _serve(client: socket.socket, upstream: tuple[str, int],
           tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None) -> tuple[bytes, int]:
    """Relay one request: (its method, the response body's bytes sent back)."""
    up = socket.create_connection(upstream)
    if tls is not None:
        client = tls[0].wrap_socket(client, server_side=True)
        up = tls[1].wrap_socket(up, server_hostname=upstream[0])
    with client, up:
        head, rest = _read_head(client)
        if not head:
            return b"", 0
        method = head.split(b" ", 1)[0].upper()
        h = _headers(head)
        req = [ln for ln in head[:-4].split(b"\r\n")
               if not ln.lower().startswith(b"connection:")]
        up.sendall(b"\r\n".join([*req, b"Connection: close", b"", b""]))
        _relay(client, up, rest, int(h.get("content-length", "0")))
        rhead, rrest = _read_head(up)
        if not rhead:
            return method, 0
        lines = rhead[:-4].split(b"\r\n")
        rh = _headers(rhead)
        if lines[0].split(b" ")[1:2] == [b"200"] and "content-range" in rh:
            lines[0] = b"HTTP/1.1 206 Partial Content"
        lines = [ln for ln in lines if not ln.lower().startswith(b"connection:")]
        client.sendall(b"\r\n".join([*lines, b"Connection: close", b"", b""]))
        if method == b"HEAD":
            return method, 0
        length = rh.get("content-length")
        return method, _relay(up, client, rrest, int(length) if length is not None else None)


class RangeRelay:
    """Listens on 127.0.0.1 (``.endpoint``) and relays to `upstream_port` until ``close``."""

    def __init__(self, upstream_port: int,
                 tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        scheme = "https" if tls is not None else "http"
        self.endpoint = f"{scheme}://127.0.0.1:{self._sock.getsockname()[1]}"
        self._upstream = ("127.0.0.1", upstream_port)
        self._tls = tls
        self.gets = 0  # GETs relayed and the bytes of their bodies (benchmarks/s3_ls.py)
        self.get_bytes = 0
        self._count = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _one(self, c: socket.socket) -> None:
        try:
            method, n = _serve(c, self._upstream, self._tls)
            if method == b"GET":
                with self._count:
                    self.gets += 1
                    self.get_bytes += n
        except OSError:
            pass  # the client or the server went away: the request fails on its side

    def close(self) -> None:
        self._sock.close()
