"""An exclusive lock on a store that is being written: ``<store>.dsbackup.lock`` beside it.

Restores and migrations take it before they open their target, so a second writer of the same
store (another restore, a migration) is refused at once with exit 4 naming the holder's PID,
instead of two processes racing on one store and one journal. The lock is ``flock`` on the
lock file (released by the kernel when its holder dies, so a killed run leaves no stale lock);
the file holds the holder's PID and what it does. It is removed on release; a waiter that
locked a file already unlinked retries on the new one. Within one process the lock is
re-entrant for the thread holding it (a migration's rollback restores into a store the
migration holds).

A backup holds the same lock shared (``TargetLock(source, "backup ...", shared=True)``) for
as long as it reads the store: a restore or migration into a store being backed up is refused
(exit 4), and so is a backup of a store being written (it would read a half-written store);
backups of one store run side by side. The last shared holder to leave removes the file. A
store whose directory the backup may not write (a read-only mount, another user's store) is
locked through an existing lock file when there is one, else not at all: nobody without
write access there can restore into it either.
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
_shared: dict[str, int] = {}  # lock path -> shared holders in this process (backups)
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
    store without a filesystem path); ``shared=True``: a reader's share of it (a backup)."""

    def __init__(self, store: Any, what: str, *, create_parent: bool = True,
                 shared: bool = False) -> None:
        self.path = lock_path(store)
        self.store = store_path(store)
        self.what = what
        # False for a store that must exist already (a migration's source): when even its
        # directory is missing there is nothing to lock, and nothing is created for it
        self.create_parent = create_parent and not shared
        self.shared = shared
        self._fd = -1
        self._mine = False  # whether this object holds a share (release undoes it)

    def __enter__(self) -> TargetLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        if self.path is None:
            return
        if self.shared:
            self._acquire_shared()
            return
        key = str(self.path)
        me = threading.get_ident()
        with _held_lock:
            if _shared.get(key):
                raise LockedError(f"{self.store}: a backup in this process (PID {os.getpid()}) "
                                  "is reading it; wait for it to finish")
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
                    msg = _busy(fd, self.store, self.path, "wait for it to finish")
                    os.close(fd)
                    raise LockedError(msg) from None
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

    def _acquire_shared(self) -> None:
        """A share of the lock: refused (exit 4) while a writer holds it; no-op where this
        process writes the store itself (a migration backing up its own source)."""
        assert self.path is not None
        key = str(self.path)
        with _held_lock:
            if key in _held:
                return
            while True:
                fd = _open_for_share(self.path)
                if fd < 0:  # no lock file and none can be made here: no writer can lock it
                    return
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    msg = _busy(fd, self.store, self.path, "back it up when that has finished")
                    os.close(fd)
                    raise LockedError(msg) from None
                except OSError:  # a filesystem without flock (ENOLCK, some NFS): no writer
                    os.close(fd)  # can hold it either
                    return
                except BaseException:
                    os.close(fd)
                    raise
                if _same_file(fd, self.path):
                    break
                os.close(fd)  # a writer removed it as it left: share the new one
            try:  # who reads it, for a refused writer's message (first line: the last one)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {self.what}\n".encode(), 0)
            except OSError:  # opened read-only: the message says "PID unknown"
                pass
            self._fd, self._mine = fd, True
            _shared[key] = _shared.get(key, 0) + 1

    def _release_shared(self, key: str) -> None:
        with _held_lock:
            if not self._mine:
                return
            self._mine = False
            n = _shared.get(key, 1) - 1
            if n:
                _shared[key] = n
            else:
                _shared.pop(key, None)
            fd, self._fd = self._fd, -1
            try:  # the last holder removes the file, as a writer does (exclusive: no one
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # else holds it)
                if _same_file(fd, self.path):
                    assert self.path is not None
                    self.path.unlink(missing_ok=True)
            except OSError:  # another backup still reads the store (or no write access)
                pass
            finally:
                os.close(fd)

    def release(self) -> None:
        if self.path is None:
            return
        key = str(self.path)
        if self.shared:
            self._release_shared(key)
            return
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


def _open_for_share(path: Path) -> int:
    """The lock file opened to be shared: created when the directory allows, else an existing
    one read-only; -1 when there is none and none can be made."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        pass
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return -1


def _same_file(fd: int, path: Path | None) -> bool:
    try:
        return path is not None and os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _busy(fd: int, store: Path | None, path: Path | None, then: str) -> str:
    """The one line of a refusal: who holds the lock (a backup reading the store, or a
    restore or migration writing it) and what to do."""
    holder = _read_holder(fd)
    try:  # a share granted now: the holders are backups (readers), not a writer
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        reading = True
    except OSError:
        reading = False
    doing = "is backing it up" if reading else "is writing to it"
    return f"{store}: another dsbackup process ({holder}) {doing}; {then} (lock file {path})"


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split("\n")[0].split()
    except OSError:
        text = []
    if text and text[0].isdigit():
        return f"PID {text[0]}" + (f", {' '.join(text[1:])}" if len(text) > 1 else "")
    return "PID unknown"
