"""``-``: an archive written to standard output, or read from standard input.

Writing streams: members go to stdout as they are made; the quick check runs on the bytes
sent (dsbackup.storage.sent). A stream cannot be withdrawn: a failed backup to ``-`` exits
non-zero and its output has no trailer, which every reader refuses.

Reading needs random access (the trailer comes first), so standard input is spooled to an
unnamed temporary file (``$TMPDIR``; as much free space as the archive) and read from there.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence

from dsbackup.errors import ArchiveError, ArchiveUnavailable
from dsbackup.storage.base import Check
from dsbackup.storage.local import LocalSource
from dsbackup.storage.sent import SentRecord, SentSource

STREAM_NAME = "-"


class StdoutSink:
    def __init__(self) -> None:
        self.final = STREAM_NAME
        self.tmp = None
        self.removed_leftovers: list[object] = []
        self._fd = sys.stdout.fileno()
        if os.isatty(self._fd):
            raise ArchiveError("-: standard output is a terminal; redirect it to a file or a "
                               "pipe to write an archive there")
        self._sent = SentRecord(STREAM_NAME)

    def write(self, pieces: Sequence[bytes | memoryview]) -> int:
        n = self._sent.add(pieces)
        views = [memoryview(p) for p in pieces if len(p)]
        try:
            while views:
                k = os.writev(self._fd, views)
                while views and k >= len(views[0]):
                    k -= len(views[0])
                    views.pop(0)
                if views and k:
                    views[0] = views[0][k:]
        except BrokenPipeError:
            raise ArchiveError("-: the reader of standard output went away (broken pipe)") \
                from None
        except OSError as exc:
            raise ArchiveError(f"-: writing to standard output failed: {exc.strerror}") \
                from None
        return n

    def commit(self, check: Check | None = None) -> None:
        try:
            if check is not None:
                check(SentSource(self._sent, STREAM_NAME))
        finally:
            self._sent.close()

    def abort(self) -> None:
        self._sent.close()  # what was sent is gone; it has no trailer: no reader accepts it


class _SpooledSource(LocalSource):
    def __init__(self, fd: int, size: int) -> None:
        self.location = STREAM_NAME  # type: ignore[assignment]
        self._fd = fd
        self.size = size


_spool: tuple[int, int] | None = None  # (fd, size): standard input is read once per process
_spool_lock = threading.Lock()


def spooled_stdin() -> LocalSource:
    """Standard input copied to an unnamed temporary file (once per process: a command may
    open the archive more than once), opened for random access."""
    global _spool
    with _spool_lock:
        if _spool is None:
            src = sys.stdin.buffer
            if os.isatty(src.fileno()):
                raise ArchiveUnavailable("-: standard input is a terminal; pipe an archive "
                                         "into it")
            with tempfile.TemporaryFile(prefix=".dsbackup-stdin-") as f:
                try:
                    shutil.copyfileobj(src, f, 1 << 20)
                except OSError as exc:
                    raise ArchiveUnavailable(f"-: spooling standard input failed: {exc}") \
                        from None
                f.flush()
                fd = os.dup(f.fileno())
            _spool = (fd, os.fstat(fd).st_size)
        fd, size = _spool
    return _SpooledSource(os.dup(fd), size)
