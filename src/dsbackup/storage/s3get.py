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
changed). Messages carry the status, the server's error code and message, scrubbed; never a
header.
"""

from __future__ import annotations

import http.client
import re
import time

from dsbackup.errors import ArchiveUnavailable, IntegrityError
from dsbackup.storage.s3api import S3Api
from dsbackup.storage.s3config import scrub

NOT_PARTIAL = ("the server answered a ranged GET with the whole-object status 200 instead of "
               "206 Partial Content, so it cannot serve an archive's random access (restore, "
               "verify, inspect, ls; rclone serve s3 1.75 does this): use another server, or "
               "download the object and read the local file")
ERROR_BODY = 64 << 10  # an error answer's body read for its code and message, at most
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class _Transient(Exception):
    """A failure worth another try; `got` bytes of the range arrived before it."""

    def __init__(self, why: str, got: int = 0, etag: str = "", *, stale: bool = False) -> None:
        super().__init__(why)
        self.got = got
        self.etag = etag
        self.stale = stale  # a kept-alive connection the server had closed: free retry


def get_into(api: S3Api, bucket: str, key: str, start: int, buf: memoryview,
             where: str) -> None:
    """Fill `buf` with the object's bytes from `start` on (``len(buf)`` of them). `where`
    names the object in messages (``s3://BUCKET/KEY``)."""
    what = f"{where}: GET bytes {start}-{start + len(buf)}"
    path = api.path(bucket, key)
    pos, etag, failures, delay = 0, "", 0, 0.1
    deadline = time.monotonic() + api.timeout_s
    while pos < len(buf):
        try:
            got, etag = _once(api, path, start + pos, buf[pos:], etag, where)
            pos += got
            continue
        except _Transient as exc:
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
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def _once(api: S3Api, path: str, lo: int, view: memoryview, etag: str,
          where: str) -> tuple[int, str]:
    """One GET of bytes lo .. lo+len(view)-1 into `view`: (bytes received, ETag)."""
    hi = lo + len(view) - 1
    extra = {"range": f"bytes={lo}-{hi}"}
    if etag:
        extra["if-match"] = etag
    headers = api.signed_headers("GET", path, (), extra=extra)
    conn, reused = api.connection()
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
        api.drop_connection()
        raise _Transient(_why(exc), stale=reused) from None
    except (OSError, http.client.HTTPException) as exc:
        api.drop_connection()
        raise _Transient(_why(exc)) from None
    if resp.status != 206:
        _refused(api, resp, where, lo)
    first, last, total = _content_range(api, resp, lo, hi, where)
    etag = resp.getheader("ETag") or etag
    got, want = 0, last - first + 1
    try:
        while got < want:
            n = resp.readinto(view[got:want])
            if not n:
                break
            got += n
    except (OSError, http.client.HTTPException) as exc:
        api.drop_connection()
        raise _Transient(_why(exc), got, etag) from None
    if got < want:
        api.drop_connection()
        raise _Transient(f"the connection closed {want - got} bytes before the end of the "
                         "body", got, etag)
    if resp.will_close or not resp.isclosed():
        api.drop_connection()
    if last < hi and (total is None or total <= last + 1):
        # the object ends inside the range: it is not the object opened
        raise IntegrityError(f"{where}: short read at offset {last + 1} (object changed?)")
    return got, etag  # all of it, or a first part of it (the rest is asked for next)


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
    """Raise for an answer that is not a 206: _Transient for a 5xx or 429, else the error."""
    status = resp.status
    if status == 200:  # may be the whole object: never read as the range
        api.drop_connection()
        raise ArchiveUnavailable(f"{where}: GET bytes from {lo} failed: {NOT_PARTIAL}")
    try:
        body = resp.read(ERROR_BODY)
    except (OSError, http.client.HTTPException):
        body = b""
    api.drop_connection()
    code, msg = _error(body)
    detail = f"HTTP {status}" + (f" {code}" if code else "") + (f": {msg}" if msg else "")
    if status >= 500 or status == 429:
        raise _Transient(detail)
    if status == 412:  # If-Match on a resumed range: another object is at the key now
        raise IntegrityError(f"{where}: the object changed while it was being read (a "
                             f"resumed GET at offset {lo} no longer matches its ETag)")
    if status == 416:  # the object ends before the range starts
        raise IntegrityError(f"{where}: short read at offset {lo} (object changed?)")
    if status in (401, 403):
        raise ArchiveUnavailable(scrub(f"{where}: GET bytes from {lo}: access denied "
                                       f"({detail})"))
    raise ArchiveUnavailable(scrub(f"{where}: GET bytes from {lo} failed: {detail}"))


def _error(body: bytes) -> tuple[str, str]:
    """An S3 error document's Code and Message (never the rest: AWS echoes what it signed)."""
    code = re.search(rb"<Code>([^<]{1,100})</Code>", body)
    msg = re.search(rb"<Message>([^<]{1,200})</Message>", body)
    return (code.group(1).decode("utf-8", "replace") if code else "",
            msg.group(1).decode("utf-8", "replace") if msg else "")


def _why(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
