"""Get an archive's pages to disk while the backup goes on, so the final fsync is short.

Without help the kernel keeps an archive's pages dirty in memory until the final fsync, which
then waits for the whole archive to reach the disk. Two things move that work earlier:

- `sync_file_range(SYNC_FILE_RANGE_WRITE)` every WRITEBACK_STEP starts the writeback of what
  is already written without waiting for it (Linux only; elsewhere, or when the call is
  missing, it does nothing).
- A thread `fdatasync`s the file every SYNC_STEP (at most one at a time; SEALING_SYNC_STEP
  for an encrypted archive's file, whose writer fsyncs it before sealing its index, on the
  backup's critical path: that fsync then waits for 16 MiB at most, not 64). Even with the data
  written back, the final fsync of a freshly written file still had to commit its block
  allocations, which early syncs take over (docs/PERFORMANCE.md, "Measurements behind the
  code"). The thread only waits for the disk; the writer never waits for it until `close`.

`DSBACKUP_NO_WRITEBACK=1` turns both off (the final fsync then does all the work).

Durability still rests on the final fsync alone; the early syncs only leave it less to do.
An error of an early sync is kept and raised by `close` (Linux reports a writeback error to
one fsync per descriptor, so the final fsync might not see it again).
"""

from __future__ import annotations

import ctypes
import os
import threading

from dsbackup._libc import libc

SYNC_FILE_RANGE_WRITE = 2
WRITEBACK_STEP = 32 << 20
SYNC_STEP = 64 << 20
SEALING_SYNC_STEP = 16 << 20

_sync_file_range = getattr(libc(), "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    _sync_file_range.restype = ctypes.c_int


class Writeback:
    """Call `advance(position)` after writes to the file open at `fd`; call `close()` (it
    raises an early sync's error) before the descriptor is closed."""

    def __init__(self, fd: int, *, sync_early: bool = True) -> None:
        self._fd = fd
        self._started = 0
        self._synced_at = 0
        self.enabled = True
        self.syncs = 0  # early fdatasyncs completed (for tests and benchmarks)
        self._sync_early = sync_early and not os.environ.get("DSBACKUP_NO_WRITEBACK")
        self._error: OSError | None = None
        self._wake = threading.Condition()
        self._want = False
        self._stop = False
        self._thread: threading.Thread | None = None  # started at the first SYNC_STEP
        self.sync_step: int | None = None  # between early syncs; None: SYNC_STEP

    def advance(self, position: int) -> None:
        if self.enabled and position - self._started >= WRITEBACK_STEP:
            if start_writeback(self._fd, self._started, position - self._started):
                self._started = position
            else:
                self.enabled = False  # not supported here
        step = SYNC_STEP if self.sync_step is None else self.sync_step
        if self._sync_early and position - self._synced_at >= step:
            self._synced_at = position
            if self._thread is None:
                self._thread = threading.Thread(target=self._sync_loop, daemon=True,
                                                name="dsbackup-early-sync")
                self._thread.start()
            with self._wake:
                self._want = True  # coalesces with a sync already asked for
                self._wake.notify()

    def _sync_loop(self) -> None:
        while True:
            with self._wake:
                while not self._want and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                self._want = False
            try:
                os.fdatasync(self._fd)
                self.syncs += 1
            except OSError as exc:
                self._error = exc
                return

    def close(self) -> None:
        """Stop the sync thread (waiting for a sync in progress); raise its error if any."""
        self._sync_early = False
        if self._thread is not None:
            with self._wake:
                self._stop = True
                self._wake.notify()
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> bool:
    """Start writing the dirty pages of [offset, offset + length) (length 0: to the end of
    the file) of the file open at `fd` without waiting; False where it is not supported."""
    if _sync_file_range is None or os.environ.get("DSBACKUP_NO_WRITEBACK"):
        return False
    return _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE) == 0
