"""Servers that do ranged GETs differently from S3, met with a real HTTP server on 127.0.0.1
speaking to the production client: a 200 to a ranged GET (rclone serve s3 1.75.2) is refused
with a message that says what is wrong; a 416 to a suffix longer than the object is followed
by a HEAD and a bounded range, and a non-empty archive is not taken for an empty one."""

from __future__ import annotations

import email.utils
import http.server
import threading

import pytest

from dsbackup.errors import ArchiveUnavailable
from dsbackup.storage import S3Location, s3config
from dsbackup.storage import s3 as s3mod

BODY = bytes(range(256)) * 300  # 76,800 bytes: shorter than the open's 256 KiB suffix GET


class _Server(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mode = "s3"  # "s3", "200" (a 200 to every ranged GET), "416" (to a too long suffix),
    # "cut" (the connection closed halfway through a block's body)

    def _range(self) -> tuple[int, int] | None:
        rng = self.headers.get("Range")
        if not rng:
            return None
        a, b = rng.split("=", 1)[1].split("-")
        if not a:  # suffix
            n = int(b)
            if n > len(BODY) and self.mode == "416":
                return (-1, -1)
            return max(0, len(BODY) - n), len(BODY) - 1
        return int(a), min(int(b), len(BODY) - 1) if b else len(BODY) - 1

    def _send(self, body: bool) -> None:
        r = self._range()
        if r == (-1, -1):
            self.send_response(416)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        lo, hi = r if r else (0, len(BODY) - 1)
        self.send_response(206 if r and self.mode != "200" else 200)
        if r:
            self.send_header("Content-Range", f"bytes {lo}-{hi}/{len(BODY)}")
        self.send_header("Content-Length", str(hi - lo + 1))
        self.send_header("ETag", '"e"')
        self.send_header("Last-Modified", email.utils.formatdate(usegmt=True))
        self.end_headers()
        if body:
            if self.mode == "cut" and hi - lo + 1 == 1024:  # a block: cut off midway
                self.wfile.write(BODY[lo:lo + (hi - lo + 1) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(BODY[lo:hi + 1])

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._send(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._send(False)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(monkeypatch):
    def start(mode: str) -> None:
        handler = type("H", (_Server,), {"mode": mode})
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{srv.server_address[1]}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIARANGETEST0000000")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "range-test-secret")
        monkeypatch.setenv("DSBACKUP_S3_RETRIES", "0")
        monkeypatch.setattr(s3config, "_settings", s3config.S3Settings())
        monkeypatch.setattr(s3config, "_tuned", False)
        s3mod.reset()

    servers: list[http.server.ThreadingHTTPServer] = []
    yield start
    s3mod.reset()
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_a_conforming_server_gives_the_whole_short_object(server):
    server("s3")
    src = s3mod.S3Source(S3Location("b", "a.dsb"))
    assert src.size == len(BODY)
    assert src.read(100, 50) == BODY[100:150]


def test_a_416_to_a_long_suffix_is_not_an_empty_archive(server):
    server("416")
    src = s3mod.S3Source(S3Location("b", "a.dsb"))
    assert src.size == len(BODY)
    assert src.read(len(BODY) - 10, 10) == BODY[-10:]


def test_a_200_to_a_ranged_get_says_so(server):
    server("200")
    with pytest.raises(ArchiveUnavailable) as exc:
        s3mod.S3Source(S3Location("b", "a.dsb"))
    msg = str(exc.value)
    assert msg.startswith("s3://b/a.dsb: GET failed: the server answered a ranged GET")
    assert "206 Partial Content" in msg and "download the object" in msg


def test_blocks_stream_into_the_cache_and_are_fetched_once(server, monkeypatch):
    """Small blocks (the body in pieces smaller than a block): reads within, across and at
    the end of blocks give the object's bytes, a forward reader fetches each block once, and
    the cache holds no more than CACHE_BLOCKS."""
    monkeypatch.setattr(s3mod, "TAIL_BYTES", 1000)
    monkeypatch.setattr(s3mod, "BLOCK", 4096)
    monkeypatch.setattr(s3mod, "PIECE", 1000)
    server("s3")
    src = s3mod.S3Source(S3Location("b", "a.dsb"))
    assert src.size == len(BODY)
    pos, sizes = 0, [1, 4095, 4096, 700, 9000, 3, 5000]
    for i in range(10_000):
        n = min(sizes[i % len(sizes)], len(BODY) - pos)
        if n == 0:
            break
        assert src.read(pos, n) == BODY[pos:pos + n], (pos, n)
        assert len(src._blocks) <= s3mod.CACHE_BLOCKS
        pos += n
    assert src._fetches <= (len(BODY) - 1) // 4096 + 1  # no block twice
    assert src.read(4000, 9000) == BODY[4000:13000]  # behind: fetched again, still right
    src.close()


def test_a_block_cut_off_midway_is_a_clear_error(server, monkeypatch):
    monkeypatch.setattr(s3mod, "TAIL_BYTES", 1000)
    monkeypatch.setattr(s3mod, "BLOCK", 1024)
    server("cut")
    src = s3mod.S3Source(S3Location("b", "a.dsb"))
    with pytest.raises(ArchiveUnavailable, match=r"^s3://b/a\.dsb: GET bytes 0-1024 failed"):
        src.read(0, 100)
    src.close()
