"""``-``: an archive written to standard output, or read from standard input.

Writing streams: members go to stdout as they are made; the quick check runs on the bytes
sent (dsbackup.storage.sent). A stream cannot be withdrawn: a failed backup to ``-`` exits
non-zero and its output has no whole trailer, which every reader refuses: the stream's last
byte is held back until the check before the "rename" has passed.

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

from dsbackup.diskspace import TMPDIR_HINT, is_no_space, no_space_message
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
        self._held = b""  # the last byte written, not sent yet (see commit)

    def write(self, pieces: Sequence[bytes | memoryview]) -> int:
        n = self._sent.add(pieces)
        views = [memoryview(p).cast("B") for p in pieces if len(p)]
        if not views:
            return n
        held, views[-1] = bytes(views[-1][-1:]), views[-1][:-1]
        if self._held:
            views.insert(0, memoryview(self._held))
        self._send(views)
        self._held = held
        return n

    def _send(self, views: list[memoryview]) -> None:
        views = [v for v in views if len(v)]
        try:
            while views:
                k = os.writev(self._fd, views[:1024])  # (IOV_MAX)
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

    def commit(self, check: Check | None = None) -> None:
        """Check what was sent, then send its last byte: an archive whose check failed (a
        damaged parent member it refers to, a member not as written) ends without it, so
        its trailer is cut and every reader refuses it. (It was sent whole, and a failed
        backup with exit 3 left an archive that `inspect` took and `verify` found damaged.)"""
        try:
            if check is not None:
                check(SentSource(self._sent, STREAM_NAME))
            self._send([memoryview(self._held)])
            self._held = b""
        finally:
            self._sent.close()

    def abort(self) -> None:
        self._sent.close()  # what was sent is gone; it has no trailer: no reader accepts it
        self._held = b""


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
                    if is_no_space(exc):  # the filesystem named, and what to do
                        raise ArchiveUnavailable("-: spooling standard input failed: " + (
                            no_space_message(tempfile.gettempdir(), what=TMPDIR_HINT))) \
                            from None
                    raise ArchiveUnavailable(f"-: spooling standard input failed: {exc}") \
                        from None
                f.flush()
                fd = os.dup(f.fileno())
            _spool = (fd, os.fstat(fd).st_size)
        fd, size = _spool
    return _SpooledSource(os.dup(fd), size)
