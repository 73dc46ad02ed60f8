"""Start writing an archive's pages to disk while the backup goes on.

Without help the kernel keeps an archive's pages dirty in memory until the final fsync, which
then waits for the whole archive to reach the disk. `sync_file_range(SYNC_FILE_RANGE_WRITE)`
starts the writeback of what is already written without waiting for it, so the disk works in
parallel with the compression and the final fsync has little left to do. Linux only; elsewhere
(or when the call is missing) this does nothing and the final fsync does all the work.
"""

from __future__ import annotations

import ctypes
import os

from dsbackup._libc import libc

SYNC_FILE_RANGE_WRITE = 2
WRITEBACK_STEP = 32 << 20

_sync_file_range = getattr(libc(), "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    _sync_file_range.restype = ctypes.c_int


class Writeback:
    """Call `advance(fd, position)` after writes; it starts writeback every WRITEBACK_STEP."""

    def __init__(self) -> None:
        self._started = 0
        self.enabled = True

    def advance(self, fd: int, position: int) -> None:
        if not self.enabled or position - self._started < WRITEBACK_STEP:
            return
        if not start_writeback(fd, self._started, position - self._started):
            self.enabled = False  # not supported here: leave it to fsync
            return
        self._started = position


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> bool:
    """Start writing the dirty pages of [offset, offset + length) (length 0: to the end of
    the file) of the file open at `fd` without waiting; False where it is not supported."""
    if _sync_file_range is None or os.environ.get("DSBACKUP_NO_WRITEBACK"):
        return False
    return _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE) == 0
