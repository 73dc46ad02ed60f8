"""Modes of the files dsbackup writes for its own use: archives, journals, spill files.

They hold a store's data, so by default only their owner may read them (mode 0600, like
borg's umask 077), whatever the process umask. ``--umask`` (docs/CLI.md) sets another one.
The process umask still applies on top; files meant for other users (the Prometheus textfile)
follow the process umask alone.
"""

from __future__ import annotations

import os
import threading

DEFAULT_PRIVATE_UMASK = 0o077

_private_umask = DEFAULT_PRIVATE_UMASK


def set_private_umask(umask: int) -> None:
    """Set the umask applied to archives, journals and spill files (0o000..0o777)."""
    global _private_umask
    if not 0 <= umask <= 0o777:
        raise ValueError(f"umask {umask:o} is not between 000 and 777")
    _private_umask = umask


def private_mode() -> int:
    """The mode to create a private file with (``os.open(..., private_mode())``)."""
    return 0o666 & ~_private_umask


_umask_guard = threading.Lock()


def process_umask() -> int:
    """The process umask, read without changing it where Linux shows it (``Umask:`` in
    /proc/self/status, Linux 4.7+). Reading it with ``os.umask`` means setting it for a moment,
    which in a program with other threads makes their files in that moment get the wrong
    mode (world-writable under ``os.umask(0)``); that fallback is taken under a lock."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_guard:
        mask = os.umask(0o077)
        os.umask(mask)
        return mask
