"""The kernel's table of file locks (Linux ``/proc/locks``): who holds a lock on a file this
process cannot test-lock itself (another user's temp file it may not open, a store directory a
backup holds shared), to judge a leftover or to name the holder in a refusal."""

from __future__ import annotations

import os

__all__ = ["lock_holders"]


def lock_holders(st: os.stat_result, kind: bytes | None = None) -> list[int] | None:
    """The PIDs holding a lock on the file `st` describes (matched by inode number: a match on
    another filesystem errs towards 'held'), or None when the table cannot be read; with
    `kind` (``b"POSIX"``, ``b"FLOCK"``) only locks of that kind."""
    try:
        with open("/proc/locks", "rb") as f:
            table = f.read()
    except OSError:
        return None
    pids = []
    for line in table.splitlines():
        parts = line.split()
        if len(parts) > 5 and parts[1] != b"->" and kind in (None, parts[1]):
            # (a waiter's line holds nothing)
            try:
                pid = int(parts[4])  # (-1: an open file's lock, OFDLCK, names no process)
                if int(parts[5].rsplit(b":", 1)[1]) == st.st_ino and pid > 0:
                    pids.append(pid)
            except (IndexError, ValueError):
                continue
    return pids
