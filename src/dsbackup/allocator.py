"""Process-wide allocator tuning for scans that hand out many large ``bytes`` values (used by
the CLI at start and the scan workers: a process-level setting, no layer's; a process that
uses dsbackup as a library keeps its own settings unless it calls these, docs/API.md "Memory").

With glibc's defaults, each value of 128 KiB or more is its own ``mmap`` and freed memory at
the top of the heap is returned to the kernel, so every batch of 256 KiB blocks costs fresh
page faults (expensive, and serialised across threads, in virtual machines). Raising
``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` lets freed value buffers be reused instead.
This is process-wide; it keeps up to ``TRIM_THRESHOLD`` bytes of freed heap mapped. Set
``DSBACKUP_NO_MALLOPT=1`` to leave the allocator alone. Does nothing off glibc.
"""

from __future__ import annotations

import os
import threading

from dsbackup._libc import libc

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit
TRIM_THRESHOLD = 256 << 20

_done = False
_lock = threading.Lock()


def tune_allocator() -> bool:
    """Apply the tuning once per process; True when it is in effect."""
    global _done
    if _done:
        return True
    with _lock:
        if _done or os.environ.get("DSBACKUP_NO_MALLOPT"):
            return _done
        mallopt = getattr(libc(), "mallopt", None)
        if mallopt is None:
            return False
        ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        _done = ok
        return ok


_one_arena = False


def single_arena() -> bool:
    """Have every thread allocate from the main arena (``M_ARENA_MAX`` 1): for a restore,
    whose inflate threads allocate the chunk payloads that the main thread frees after
    writing them. In per-thread arenas those buffers of varying sizes left the arenas'
    resident high-water mark creeping up for seconds, so a longer restore took more memory
    (docs/PERFORMANCE.md, "Memory flat in store size"). A deep verify's threads (which
    read, inflate and free chunks themselves) and a backup's threads (its closing check
    above all) crept up the same way: +14 and +18 MiB at 32 GiB against 4 GiB. Call it
    before threads allocate (glibc fixes the arena limit once more than 8 arenas exist).
    True when in effect; ``DSBACKUP_NO_MALLOPT=1`` leaves it alone, as for
    tune_allocator."""
    global _one_arena
    with _lock:
        if _one_arena or os.environ.get("DSBACKUP_NO_MALLOPT"):
            return _one_arena
        mallopt = getattr(libc(), "mallopt", None)
        _one_arena = mallopt is not None and bool(mallopt(M_ARENA_MAX, 1))
        return _one_arena
