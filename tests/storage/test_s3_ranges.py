"""Servers that do ranged GETs differently from S3, met with a real HTTP server on 127.0.0.1
speaking to the production client: a 200 to a ranged GET (rclone serve s3 1.75.2) is refused
with a message that says what is wrong; a 416 to a suffix longer than the object is followed
by a HEAD and a bounded range, and a non-empty archive is not taken for an empty one."""

from __future__ import annotations

import email.utils
import http.server
import mmap
import threading

import pytest

from dsbackup._ext.checksum import xxh3_64
from dsbackup.errors import ArchiveUnavailable, IntegrityError
from dsbackup.storage import S3Location, s3config
from dsbackup.storage import s3 as s3mod

BODY = bytes(range(256)) * 300  # 76,800 bytes: shorter than the open's 256 KiB suffix GET


class _Server(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mode = "s3"  # "s3", "200" (a 200 to every ranged GET), "416" (to a too long suffix),
    # "cut" (the connection closed halfway through a block's body), and for a block's GET
    # (a range with both ends, not the open's suffix; "first": of the first block):
    # "cut-once" (the first cut halfway),
    # "changed" (the first cut halfway, then 412 to If-Match), "block-200" (a 200),
    # "shrunk" (the object ends 100 bytes into it), "503-once" (the first a 503),
    # "elsewhere" (a 206 for another range), "denied" (a 403 with an error document)
    gets: list[dict[str, str]] = []  # the headers of each block GET (lower-case names)

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

    def _block_answer(self, lo: int, hi: int) -> bool:
        """The faulty answers to a block's GET; True when one was sent."""
        first = lo == 0 and not any(g["range"].startswith("bytes=0-") for g in self.gets)
        self.gets.append({k.lower(): v for k, v in self.headers.items()})
        mode = self.mode
        if mode in ("cut-once", "changed") and first:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {lo}-{hi}/{len(BODY)}")
            self.send_header("Content-Length", str(hi - lo + 1))
            self.send_header("ETag", '"e"')
            self.end_headers()
            self.wfile.write(BODY[lo:lo + (hi - lo + 1) // 2])
            self.wfile.flush()
            self.close_connection = True
            return True
        if mode == "changed" and self.headers.get("If-Match"):
            return self._error(412, "PreconditionFailed")
        if mode == "503-once" and first:
            return self._error(503, "SlowDown")
        if mode == "denied":
            return self._error(403, "AccessDenied")
        if mode in ("block-200", "shrunk", "elsewhere"):
            end = min(hi, lo + 99) if mode == "shrunk" else hi
            size = end + 1 if mode == "shrunk" else len(BODY)
            at = lo + 1 if mode == "elsewhere" else lo
            self.send_response(200 if mode == "block-200" else 206)
            if mode != "block-200":
                self.send_header("Content-Range", f"bytes {at}-{end}/{size}")
            self.send_header("Content-Length", str(end - at + 1))
            self.end_headers()
            self.wfile.write(BODY[at:end + 1])
            return True
        return False

    def _error(self, status: int, code: str) -> bool:
        doc = (f"<Error><Code>{code}</Code><Message>no: {code}</Message></Error>").encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(doc)))
        self.end_headers()
        self.wfile.write(doc)
        return True

    def _send(self, body: bool) -> None:
        r = self._range()
        rng = self.headers.get("Range", "")
        if body and r and not rng.startswith("bytes=-") and self._block_answer(*r):
            return
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
        suffix = rng.startswith("bytes=-")
        # "etag-other": blocks answered from another object, If-Match ignored; "etag-bare":
        # the same ETag, unquoted and weak
        etag = {"etag-other": '"f"', "etag-bare": "W/e"}.get(self.mode, '"e"')
        self.send_header("ETag", '"e"' if suffix else etag)
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
    def start(mode: str, retries: int = 0) -> None:
        handler = type("H", (_Server,), {"mode": mode, "gets": []})
        handlers.append(handler)
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{srv.server_address[1]}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIARANGETEST0000000")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "range-test-secret")
        monkeypatch.setenv("DSBACKUP_S3_RETRIES", str(retries))
        monkeypatch.setattr(s3config, "_settings", s3config.S3Settings())
        monkeypatch.setattr(s3config, "_tuned", False)
        s3mod.reset()

    servers: list[http.server.ThreadingHTTPServer] = []
    handlers: list[type[_Server]] = []
    start.handlers = handlers
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
    """Small blocks: reads within, across and at the end of blocks give the object's bytes,
    a forward reader fetches each block once, and the cache holds no more than
    CACHE_BLOCKS. (The obstore client's stream, used before with an instance's role, is gone:
    our GETs get the role's credentials too, s3creds.py.)"""
    monkeypatch.setattr(s3mod, "TAIL_BYTES", 1000)
    monkeypatch.setattr(s3mod, "BLOCK", 4096)
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


def _small_blocks(monkeypatch) -> None:
    monkeypatch.setattr(s3mod, "TAIL_BYTES", 1000)
    monkeypatch.setattr(s3mod, "BLOCK", 1024)


def test_a_block_cut_off_midway_resumes_where_it_stopped(server, monkeypatch):
    """With retries, the rest of a cut block is asked for (If-Match: the same object), and
    the bytes are the object's."""
    _small_blocks(monkeypatch)
    server("cut-once", retries=2)
    src = s3mod.S3Source(S3Location("b", "a.dsb"))
    assert src.read(100, 900) == BODY[100:1000]
    assert src.read(1000, 1000) == BODY[1000:2000]
    gets = [g for g in server.handlers[0].gets if g["range"].startswith("bytes=0-")]
    assert gets[0]["range"] == "bytes=0-1023"
    # every GET carries the ETag the open saw (the suffix GET's): one object throughout
    assert all(g.get("if-match") == '"e"' for g in server.handlers[0].gets)
    resumed = [g for g in server.handlers[0].gets if g["range"] == "bytes=512-1023"]
    assert len(resumed) == 1
    src.close()


def test_a_resumed_block_of_a_changed_object_is_an_integrity_error(server, monkeypatch):
    _small_blocks(monkeypatch)
    server("changed", retries=2)
    src = s3mod.S3Source(S3Location("b", "a.dsb"))
    with pytest.raises(IntegrityError, match=r"^s3://b/a\.dsb: the object changed while"):
        src.read(0, 100)
    src.close()


def test_a_200_to_a_block_is_refused(server, monkeypatch):
    _small_blocks(monkeypatch)
    server("block-200", retries=2)
    src = s3mod.S3Source(S3Location("b", "a.dsb"))
    with pytest.raises(ArchiveUnavailable, match="206 Partial Content"):
        src.read(0, 100)
    assert [g["range"] for g in server.handlers[0].gets].count("bytes=0-1023") == 1
    src.close()


def test_an_object_ending_inside_a_block_is_a_short_read(server, monkeypatch):
    _small_blocks(monkeypatch)
    server("shrunk", retries=2)
    src = s3mod.S3Source(S3Location("b", "a.dsb"))
    with pytest.raises(IntegrityError, match=r"short read at offset 100 \(object changed\?\)"):
        src.read(0, 500)
    src.close()


def test_a_206_for_another_range_is_refused(server, monkeypatch):
    _small_blocks(monkeypatch)
    server("elsewhere", retries=2)
    src = s3mod.S3Source(S3Location("b", "a.dsb"))
    with pytest.raises(ArchiveUnavailable, match="not the range asked for"):
        src.read(0, 100)
    src.close()


def test_a_503_is_retried(server, monkeypatch):
    _small_blocks(monkeypatch)
    server("503-once", retries=2)
    src = s3mod.S3Source(S3Location("b", "a.dsb"))
    assert src.read(0, 3000) == BODY[:3000]
    assert src.xxh3(10, 1000) == xxh3_64(BODY[10:1010])  # within a block: hashed in place
    assert src.xxh3(1000, 100) == xxh3_64(BODY[1000:1100])  # across two
    src.close()


def test_a_503_without_retries_names_the_status(server, monkeypatch):
    _small_blocks(monkeypatch)
    server("503-once")
    src = s3mod.S3Source(S3Location("b", "a.dsb"))
    with pytest.raises(ArchiveUnavailable, match=r"GET bytes 0-1024 failed: HTTP 503 SlowDown"):
        src.read(0, 100)
    src.close()


def test_access_denied_is_not_retried_and_keeps_no_secret(server, monkeypatch):
    _small_blocks(monkeypatch)
    server("denied", retries=3)
    src = s3mod.S3Source(S3Location("b", "a.dsb"))
    with pytest.raises(ArchiveUnavailable) as exc:
        src.read(0, 100)
    msg = str(exc.value)
    assert "access denied (HTTP 403 AccessDenied" in msg
    assert "range-test-secret" not in msg and "Signature" not in msg
    assert [g["range"] for g in server.handlers[0].gets].count("bytes=0-1023") == 1
    src.close()


def test_block_buffers_are_reused_not_remapped(server, monkeypatch):
    """A forward reader over many blocks maps no more buffers than the cache holds and the
    GETs in flight: evicted blocks give theirs to the next."""
    monkeypatch.setattr(s3mod, "TAIL_BYTES", 1000)
    monkeypatch.setattr(s3mod, "BLOCK", 2048)
    made = []
    real = mmap.mmap

    def counting(*a, **k):
        made.append(1)
        return real(*a, **k)

    monkeypatch.setattr(s3mod.mmap, "mmap", counting)
    server("s3")
    src = s3mod.S3Source(S3Location("b", "a.dsb"))
    for pos in range(0, len(BODY) - 1000, 700):
        assert src.read(pos, 700) == BODY[pos:pos + 700]
    assert src._fetches >= 30
    assert len(made) <= s3mod.CACHE_BLOCKS + s3config.settings().read_concurrency
    src.close()


def test_a_block_of_another_object_is_refused_though_if_match_was_ignored(server, monkeypatch):
    _small_blocks(monkeypatch)
    server("etag-other")
    src = s3mod.S3Source(S3Location("b", "a.dsb"))
    with pytest.raises(IntegrityError, match=r"the object changed while it was being read"):
        src.read(0, 100)
    src.close()


def test_the_same_etag_quoted_otherwise_is_the_same_object(server, monkeypatch):
    _small_blocks(monkeypatch)
    server("etag-bare")
    src = s3mod.S3Source(S3Location("b", "a.dsb"))
    assert src.read(0, 2000) == BODY[:2000]
    src.close()
