"""An exclusive lock on a store that is being written: ``<store>.dsbackup.lock`` beside it.

Restores and migrations take it before they open their target, so a second writer of the same
store (another restore, a migration) is refused at once with exit 4 naming the holder's PID,
instead of two processes racing on one store and one journal. The lock is ``flock`` on the
lock file (released by the kernel when its holder dies, so a killed run leaves no stale lock);
the file holds the holder's PID and what it does. It is removed on release; a waiter that
locked a file already unlinked retries on the new one. Within one process the lock is
re-entrant for the thread holding it (a migration's rollback restores into a store the
migration holds). A backup of a store another process holds is refused too (exit 4): it would
read a half-written store (refuse_if_being_written).
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from typing import Any

from dsbackup.errors import LockedError

SUFFIX = ".dsbackup.lock"

_held: dict[str, tuple[int, int]] = {}  # lock path -> (thread ident, depth)
_held_lock = threading.Lock()


def store_path(store: Any) -> Path | None:
    """The filesystem path of a store (URI, path or opened store with ``uri``), or None
    (memory stores). The path comes from the URI's location, never the URI string itself
    (``flatfs:DIR?shard=suffix/2`` is the directory DIR)."""
    from dsbackup.datastores.registry import parse_uri

    uri = os.fspath(store) if isinstance(store, (str, os.PathLike)) else getattr(store, "uri",
                                                                                 None)
    if not isinstance(uri, str) or not uri:
        return None
    scheme, loc, _ = parse_uri(uri)
    if scheme == "memory" or not loc:
        return None
    return Path(loc).absolute()


def lock_path(store: Any) -> Path | None:
    p = store_path(store)
    return None if p is None else p.with_name(p.name + SUFFIX)


class TargetLock:
    """``with TargetLock(store, "restore"):`` — hold the store's write lock (no-op for a
    store without a filesystem path)."""

    def __init__(self, store: Any, what: str, *, create_parent: bool = True) -> None:
        self.path = lock_path(store)
        self.store = store_path(store)
        self.what = what
        # False for a store that must exist already (a migration's source): when even its
        # directory is missing there is nothing to lock, and nothing is created for it
        self.create_parent = create_parent
        self._fd = -1

    def __enter__(self) -> TargetLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        if self.path is None:
            return
        key = str(self.path)
        me = threading.get_ident()
        with _held_lock:
            held = _held.get(key)
            if held is not None:
                if held[0] != me:
                    raise LockedError(f"{self.store}: another thread of this process "
                                      f"(PID {os.getpid()}) is writing to it")
                _held[key] = (me, held[1] + 1)
                return
            if not self.path.parent.is_dir():
                if not self.create_parent:
                    self.path = None  # release() is then a no-op too
                    return
                self.path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise LockedError(
                        f"{self.store}: another dsbackup process ({holder}) is writing to "
                        f"it; wait for it to finish (lock file {self.path})") from None
                except BaseException:
                    os.close(fd)
                    raise
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)  # the holder removed it while we waited: lock the new one
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {self.what}\n".encode())
            self._fd = fd
            _held[key] = (me, 1)

    def release(self) -> None:
        if self.path is None:
            return
        key = str(self.path)
        with _held_lock:
            held = _held.get(key)
            if held is None:
                return
            if held[1] > 1:
                _held[key] = (held[0], held[1] - 1)
                return
            del _held[key]
            if self._fd >= 0:
                try:
                    self.path.unlink(missing_ok=True)  # while locked: no one else holds it
                finally:
                    fd, self._fd = self._fd, -1
                    os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    except OSError:
        text = []
    if text and text[0].isdigit():
        return f"PID {text[0]}" + (f", {' '.join(text[1:])}" if len(text) > 1 else "")
    return "PID unknown"


def refuse_if_being_written(store: Any, doing: str) -> None:
    """LockedError when another process holds `store`'s write lock (a restore or migration
    into it is running): `doing` it now would read a half-written store and call it done.
    A lock held by this process (a migration backing up its own source) is no obstacle."""
    path = lock_path(store)
    if path is None:
        return
    with _held_lock:
        if str(path) in _held:
            return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:  # no lock file (the usual case): nobody is writing
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released by the close below
    except BlockingIOError:
        raise LockedError(
            f"{store_path(store)}: another dsbackup process ({_read_holder(fd)}) is writing "
            f"to it; {doing} when that has finished (lock file {path})") from None
    except OSError:  # a filesystem without flock (ENOLCK on some NFS): no writer can hold it
        return
    finally:
        os.close(fd)
