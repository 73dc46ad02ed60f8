"""Ranged GETs read straight into a caller's buffer: the S3 source's blocks
(:mod:`dsbackup.storage.s3`). The body goes from the socket into the buffer by http.client's
``readinto`` on the thread's kept-alive connection, signed as :mod:`dsbackup.storage.s3api`
signs its requests: one copy per byte, the kernel's, where the obstore client's stream added
its own pieces, a copy of each into the block and an async runtime's thread hand-offs (about
three times the client CPU per byte fetched, docs/PERFORMANCE.md "Reading from S3").

What comes back is checked before a byte is kept: the answer must be ``206 Partial Content``
whose Content-Range is the range asked for (a 200 may be the whole object: refused, as
object_store refuses it); an object that ends inside the range changed under the reader
(IntegrityError). A connection cut in the middle of the body, a 5xx or a 429 is retried with
backoff within the retry window (settings' retries and timeout, counted again after any
progress), resuming after the bytes already received, with ``If-Match`` on the first
answer's ETag: the resumed bytes come from the same object or not at all (412: the object
changed). A source pins the ETag its open saw (:func:`get_tail`, the suffix GET of the
trailer): every later GET carries it in ``If-Match``, and an answer with another ETag is
refused too, so no read mixes bytes of two objects put at the same key. Messages carry the
status, the server's error code and message, scrubbed; never a header.

A :class:`Cancel` stops the GETs of one source when it is closed: no new request or retry
starts, a backoff wait ends at once, and the connection a body is being read from is shut
down, so a GET in flight ends within moments rather than after its retry window.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import threading
import time

from dsbackup.errors import ArchiveUnavailable, IntegrityError
from dsbackup.storage.s3api import S3Api
from dsbackup.storage.s3config import scrub
from dsbackup.storage.s3tls import permanent, tls_error, tls_failure

NOT_PARTIAL = ("the server answered a ranged GET with the whole-object status 200 instead of "
               "206 Partial Content, so it cannot serve an archive's random access (restore, "
               "verify, inspect, ls; rclone serve s3 1.75 does this): use another server, or "
               "download the object and read the local file")
ERROR_BODY = 64 << 10  # an error answer's body read for its code and message, at most
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class Cancel:
    """The GETs of one source, stopped together (the source was closed): :meth:`set` makes
    each stop before its next request or retry, ends its backoff wait and shuts down the
    connection it is reading a body from."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[http.client.HTTPConnection] = set()

    def set(self) -> None:
        with self._lock:
            self._event.set()
            conns = list(self._conns)
        for conn in conns:
            sock = conn.sock
            if sock is not None:  # the reading thread sees EOF or an error at once
                try:
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)  # not ssl's: its state
                except OSError:
                    pass

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise ArchiveUnavailable(closed_message(self.where))

    def sleep(self, seconds: float) -> None:
        if self._event.wait(seconds):
            raise ArchiveUnavailable(closed_message(self.where))

    def watch(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self.check()
            self._conns.add(conn)

    def unwatch(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._conns.discard(conn)


def closed_message(where: str) -> str:
    return f"{where}: the archive was closed while it was being read"


_NEVER = Cancel("")  # a token nobody sets: GETs outside a source


class _Transient(Exception):
    """A failure worth another try; `got` bytes of the range arrived before it."""

    def __init__(self, why: str, got: int = 0, etag: str = "", *, stale: bool = False) -> None:
        super().__init__(why)
        self.got = got
        self.etag = etag
        self.stale = stale  # a kept-alive connection the server had closed: free retry


def get_into(api: S3Api, bucket: str, key: str, start: int, buf: memoryview,
             where: str, *, etag: str = "", cancel: Cancel | None = None) -> str:
    """Fill `buf` with the object's bytes from `start` on (``len(buf)`` of them); returns the
    ETag they came from. `where` names the object in messages (``s3://BUCKET/KEY``); `etag`:
    the object's ETag when known (the open's), sent as ``If-Match`` from the first request
    on; `cancel`: stops the GET when its source is closed."""
    cancel = cancel or _NEVER
    what = f"{where}: GET bytes {start}-{start + len(buf)}"
    path = api.path(bucket, key)
    pos, failures, delay = 0, 0, 0.1
    deadline = time.monotonic() + api.timeout_s
    while pos < len(buf):
        cancel.check()
        try:
            got, etag = _once(api, path, start + pos, buf[pos:], etag, where, cancel)
            pos += got
            continue
        except _Transient as exc:
            cancel.check()  # a connection cut by close(): no retry
            if exc.stale:
                continue  # the server closed the idle kept-alive connection: once more
            pos += exc.got
            etag = exc.etag or etag
            if exc.got:  # progress: the window starts again
                failures, delay = 0, 0.1
                deadline = time.monotonic() + api.timeout_s
            failures += 1
            if failures > api.retries or time.monotonic() + delay > deadline:
                raise ArchiveUnavailable(scrub(f"{what} failed: {exc}")) from None
        cancel.sleep(delay)
        delay = min(delay * 2, 5.0)
    return etag


def get_tail(api: S3Api, bucket: str, key: str, n: int, where: str, *,
             cancel: Cancel | None = None) -> tuple[bytes, int, str] | None:
    """The open's one GET: the last `n` bytes (a suffix range), the object's size and its
    ETag; None when the server refused the suffix as unsatisfiable (416: an empty object, or
    a server that refuses a suffix longer than the object; the caller HEADs). A missing
    object is "no such archive"; retried as :func:`get_into`."""
    cancel = cancel or _NEVER
    path = api.path(bucket, key)
    failures, delay = 0, 0.1
    deadline = time.monotonic() + api.timeout_s
    while True:
        cancel.check()
        try:
            return _tail_once(api, path, n, where, cancel)
        except _Transient as exc:
            cancel.check()
            if exc.stale:
                continue
            failures += 1
            if failures > api.retries or time.monotonic() + delay > deadline:
                raise ArchiveUnavailable(scrub(f"{where}: GET failed: {exc}")) from None
        cancel.sleep(delay)
        delay = min(delay * 2, 5.0)


def _tail_once(api: S3Api, path: str, n: int, where: str,
               cancel: Cancel) -> tuple[bytes, int, str] | None:
    headers = api.signed_headers("GET", path, (), extra={"range": f"bytes=-{n}"})
    conn, resp, reused = _request(api, path, headers, cancel)
    try:
        if resp.status == 416:
            _discard(api, resp)
            return None
        if resp.status == 404:
            _discard(api, resp)
            raise ArchiveUnavailable(f"{where}: no such archive (object not found)")
        if resp.status != 206:
            if resp.status == 200:
                api.drop_connection()
                raise ArchiveUnavailable(f"{where}: GET failed: {NOT_PARTIAL}")
            _refused(api, resp, where, -1)
        m = _CONTENT_RANGE.fullmatch((resp.getheader("Content-Range") or "").strip())
        if m is None or m.group(3) == "*" or int(m.group(2)) != int(m.group(3)) - 1 or \
                int(m.group(2)) - int(m.group(1)) + 1 != min(n, int(m.group(3))):
            api.drop_connection()
            got = scrub(str(resp.getheader("Content-Range")))[:80]
            raise ArchiveUnavailable(f"{where}: GET failed: the server's 206 answer to the "
                                     f"last {n} bytes covers {got!r}, not the object's end")
        size = int(m.group(3))
        etag = resp.getheader("ETag") or ""
        body = bytearray(int(m.group(2)) - int(m.group(1)) + 1)
        _read_body(api, resp, memoryview(body), etag)
        return bytes(body), size, etag
    finally:
        cancel.unwatch(conn)


def _discard(api: S3Api, resp: http.client.HTTPResponse) -> None:
    try:
        resp.read(ERROR_BODY)
    except (OSError, http.client.HTTPException):
        pass
    api.drop_connection()


def _request(api: S3Api, path: str, headers: dict[str, str], cancel: Cancel
             ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, bool]:
    """Send a GET on this thread's connection (watched by `cancel`): (connection, answer,
    whether the connection was kept from an earlier request)."""
    conn, reused = api.connection()
    cancel.watch(conn)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
        cancel.unwatch(conn)
        api.drop_connection()
        raise _Transient(_why(exc), stale=reused) from None
    except (OSError, http.client.HTTPException) as exc:
        cancel.unwatch(conn)
        api.drop_connection()
        if permanent(exc):  # a rejected certificate, not TLS: no retry mends it
            raise tls_error(api.endpoint, exc) from None  # type: ignore[arg-type]
        raise _Transient(_why(exc)) from None
    except BaseException:
        cancel.unwatch(conn)
        raise
    return conn, resp, reused


def _read_body(api: S3Api, resp: http.client.HTTPResponse, view: memoryview,
               etag: str) -> None:
    """Read the answer's body into `view` (all of it): _Transient with the bytes received
    when the connection breaks first."""
    got, want = 0, len(view)
    try:
        while got < want:
            n = resp.readinto(view[got:want])
            if not n:
                break
            got += n
    except (OSError, ValueError, http.client.HTTPException) as exc:
        api.drop_connection()
        raise _Transient(_why(exc), got, etag) from None
    if got < want:
        api.drop_connection()
        raise _Transient(f"the connection closed {want - got} bytes before the end of the "
                         "body", got, etag)
    if resp.will_close or not resp.isclosed():
        api.drop_connection()


def _once(api: S3Api, path: str, lo: int, view: memoryview, etag: str,
          where: str, cancel: Cancel) -> tuple[int, str]:
    """One GET of bytes lo .. lo+len(view)-1 into `view`: (bytes received, ETag)."""
    hi = lo + len(view) - 1
    extra = {"range": f"bytes={lo}-{hi}"}
    if etag:
        extra["if-match"] = etag
    headers = api.signed_headers("GET", path, (), extra=extra)
    conn, resp, _ = _request(api, path, headers, cancel)
    try:
        if resp.status != 206:
            _refused(api, resp, where, lo)
        first, last, total = _content_range(api, resp, lo, hi, where)
        got_etag = resp.getheader("ETag") or etag
        if etag and _bare(got_etag) != _bare(etag):  # If-Match ignored: another object
            api.drop_connection()
            raise IntegrityError(f"{where}: the object changed while it was being read (a "
                                 f"GET at offset {lo} answered with another ETag)")
        _read_body(api, resp, view[:last - first + 1], got_etag)
    finally:
        cancel.unwatch(conn)
    if last < hi and (total is None or total <= last + 1):
        # the object ends inside the range: it is not the object opened
        raise IntegrityError(f"{where}: short read at offset {last + 1} (object changed?)")
    return last - first + 1, got_etag  # all of it, or a first part (the rest is asked next)


def _content_range(api: S3Api, resp: http.client.HTTPResponse, lo: int, hi: int,
                   where: str) -> tuple[int, int, int | None]:
    """(first, last, object size or None) of a 206's Content-Range: it must start where
    asked and end no later."""
    m = _CONTENT_RANGE.fullmatch((resp.getheader("Content-Range") or "").strip())
    length = resp.getheader("Content-Length")
    if m is None or int(m.group(1)) != lo or int(m.group(2)) > hi or int(m.group(2)) < lo or (
            length is not None and length.strip() != str(int(m.group(2)) - lo + 1)):
        api.drop_connection()
        got = scrub(str(resp.getheader("Content-Range")))[:80]
        raise ArchiveUnavailable(f"{where}: GET bytes {lo}-{hi + 1} failed: the server's "
                                 f"206 answer covers {got!r}, not the range asked for")
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


def _refused(api: S3Api, resp: http.client.HTTPResponse, where: str, lo: int) -> None:
    """Raise for an answer that is not a 206: _Transient for a 5xx or 429, else the error
    (`lo` -1: the open's suffix GET)."""
    status = resp.status
    what = "GET" if lo < 0 else f"GET bytes from {lo}"
    if status == 200:  # may be the whole object: never read as the range
        api.drop_connection()
        raise ArchiveUnavailable(f"{where}: {what} failed: {NOT_PARTIAL}")
    try:
        body = resp.read(ERROR_BODY)
    except (OSError, http.client.HTTPException):
        body = b""
    api.drop_connection()
    code, msg = _error(body)
    detail = f"HTTP {status}" + (f" {code}" if code else "") + (f": {msg}" if msg else "")
    if status >= 500 or status == 429:
        raise _Transient(detail)
    if status == 412:  # If-Match: another object is at the key now
        raise IntegrityError(f"{where}: the object changed while it was being read (a "
                             f"GET at offset {lo} no longer matches its ETag)")
    if status == 416:  # the object ends before the range starts
        raise IntegrityError(f"{where}: short read at offset {lo} (object changed?)")
    if status in (401, 403):
        raise ArchiveUnavailable(scrub(f"{where}: {what}: access denied ({detail})"))
    raise ArchiveUnavailable(scrub(f"{where}: {what} failed: {detail}"))


def _error(body: bytes) -> tuple[str, str]:
    """An S3 error document's Code and Message (never the rest: AWS echoes what it signed)."""
    code = re.search(rb"<Code>([^<]{1,100})</Code>", body)
    msg = re.search(rb"<Message>([^<]{1,200})</Message>", body)
    return (code.group(1).decode("utf-8", "replace") if code else "",
            msg.group(1).decode("utf-8", "replace") if msg else "")


def _bare(etag: str) -> str:
    """An ETag without the quotes and weak marker some servers add or drop between answers."""
    etag = etag.strip()
    return (etag[2:] if etag.startswith("W/") else etag).strip('"')


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return tls_failure(exc)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
