"""Descriptors that a forked child closes at once: lock files this process holds (a store's
flock, goleveldb's LOCK, a spill directory's lock), so that a child outliving its SIGKILLed
parent (a scan worker) does not keep them locked."""

from __future__ import annotations

import contextlib
import os

_sets: list[set[int]] = []


def _close_in_child() -> None:
    for fds in _sets:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        fds.clear()


os.register_at_fork(after_in_child=_close_in_child)


def closed_in_child() -> set[int]:
    """A set to hold such descriptors: add them while held, discard them once closed."""
    fds: set[int] = set()
    _sets.append(fds)
    return fds
