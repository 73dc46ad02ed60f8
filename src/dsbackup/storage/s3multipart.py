"""A multipart upload fed member by member, completed only if the key is still free.

Parts of exactly ``part_size`` bytes but the last (S3's minimum is 5 MiB) are sent by a small
thread pool, at most ``concurrency`` in flight: memory is about part_size x
(concurrency + 1) whatever the archive's size. Each part's pieces are sent as they are, no
joined copy. Completion carries ``If-None-Match: *`` (unless the caller replaces an object
on purpose), so an object written at the key meanwhile, by anyone, is never replaced: the
server answers 412. An upload that fails or is abandoned is aborted.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from dsbackup.errors import S3ApiError
from dsbackup.storage.s3api import S3Api, multipart_etag

log = logging.getLogger(__name__)


class KeyTaken(Exception):
    """The server refused to complete: an object appeared at the key (412)."""


class Conflict(Exception):
    """The server reported a concurrent conditional write at the key (409): nothing landed."""


class MultipartUpload:
    """One multipart upload to ``bucket``/``key``; ``write`` pieces, then ``complete`` or
    ``abort``. Errors of the requests are S3ApiError (their messages carry no secret)."""

    def __init__(self, api: S3Api, bucket: str, key: str, *, part_size: int,
                 concurrency: int) -> None:
        self.api, self.bucket, self.key = api, bucket, key
        self.part_size = part_size
        self.concurrency = max(1, concurrency)
        self.upload_id = api.create_multipart_upload(bucket, key)
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="dsbackup-s3put")
        self._pending: list[bytes | memoryview] = []
        self._pending_size = 0
        self._inflight: deque[Future[str]] = deque()
        self._etags: list[str] = []
        self._closed = False

    def write(self, data: bytes | memoryview) -> None:
        """Queue `data` (kept, not copied, until its part is sent); a full part is sent,
        waiting first while `concurrency` parts are in flight."""
        if not data:
            return
        view = memoryview(data)
        while self._pending_size + len(view) >= self.part_size:
            take = self.part_size - self._pending_size
            self._pending.append(view[:take])
            self._pending_size += take
            self._send()
            view = view[take:]
        if len(view):
            self._pending.append(view)
            self._pending_size += len(view)

    def _send(self) -> None:
        while len(self._inflight) >= self.concurrency:
            self._etags.append(self._inflight.popleft().result())
        number = len(self._etags) + len(self._inflight) + 1
        pieces, self._pending, self._pending_size = self._pending, [], 0
        self._inflight.append(self._pool.submit(self.api.upload_part, self.bucket, self.key,
                                                self.upload_id, number, pieces))

    def complete(self, *, replace: bool) -> None:
        """Send what is left, wait for every part, then join them into the object: with
        ``replace`` False the completion is conditional (KeyTaken on 412, Conflict on 409)."""
        if self._pending or not (self._etags or self._inflight):
            self._send()
        while self._inflight:
            self._etags.append(self._inflight.popleft().result())
        self._pool.shutdown()
        try:
            self.api.complete_multipart_upload(self.bucket, self.key, self.upload_id,
                                               self._etags, if_none_match=not replace)
        except S3ApiError as exc:
            if exc.status == 412:
                if self._landed():  # an earlier try of this completion did it, its answer lost
                    self._closed = True
                    return
                raise KeyTaken(str(exc)) from None
            if exc.status == 409:
                raise Conflict(str(exc)) from None
            raise
        self._closed = True

    def _landed(self) -> bool:
        """Whether the object at the key is this upload's (its ETag is the one S3 gives an
        object made of exactly these parts)."""
        want = multipart_etag(self._etags)
        if not want:
            return False
        try:
            r = self.api.request("HEAD", self.bucket, self.key)
        except S3ApiError:
            return False
        return r.etag.strip().strip('"') == want

    def abort(self) -> None:
        """Stop sending and abort the upload (its parts are deleted); best effort."""
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        try:
            self.api.abort_multipart_upload(self.bucket, self.key, self.upload_id)
        except S3ApiError as exc:
            log.warning("s3://%s/%s: could not abort the multipart upload (%s); its parts stay "
                        "until the next backup to this prefix or the bucket's lifecycle rule "
                        "removes them", self.bucket, self.key, exc)

    @property
    def parts_sent(self) -> Sequence[str]:
        return tuple(self._etags)
