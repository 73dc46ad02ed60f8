"""An exclusive lock on a store that is being written: ``<store>.dsbackup.lock`` beside it.

Restores and migrations take it before they open their target, so a second writer of the same
store (another restore, a migration) is refused at once with exit 4 naming the holder's PID,
instead of two processes racing on one store and one journal. The lock is ``flock`` on the
lock file (released by the kernel when its holder dies, so a killed run leaves no stale lock);
the file holds the holder's PID and what it does. It is removed on release; a waiter that
locked a file already unlinked retries on the new one. Within one process the lock is
re-entrant for the thread holding it (a migration's rollback restores into a store the
migration holds).

A backup must not change its source, so it creates no lock file: it holds a shared ``flock``
on the store's directory itself (``TargetLock(source, "backup ...", shared=True)``) for as
long as it reads the store, after checking that no writer holds the lock file. A restore or
migration takes, after its lock file, an exclusive ``flock`` on the store's directory when it
exists: so a restore into a store being backed up is refused (exit 4, the backup's PID from
the kernel's lock table), and so is a backup of a store being written (it would read a
half-written store); backups of one store run side by side. Stores that overlap (one inside
the other: ``flatfs:REPO/blocks`` and ``kubo:REPO``) and one-file stores (``sqlite:``, whose
database file is not locked: that could meet SQLite's own locks) are excluded the same way by
nestlock.py, with marks on the directories above the store; so are two writers of stores
that overlap (a restore into ``x/store`` and one into ``x/store/sub`` or ``x``).
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from typing import Any

from dsbackup._forkfds import closed_in_child
from dsbackup.engine import nestlock
from dsbackup.errors import DsBackupError, LockedError
from dsbackup.storage.locktable import lock_holders

SUFFIX = nestlock.SUFFIX
_read_holder = nestlock.read_holder

_held: dict[str, tuple[int, int]] = {}  # lock path -> (thread ident, depth)
_held_lock = threading.Lock()
# store directories this process holds flocked: a forked child (a scan worker) closes its
# copies at once, so one outliving a SIGKILLed backup does not keep the store held
_dir_fds = closed_in_child()


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


def outside_dirs(store: Any) -> list[Path]:
    """The directories of a ``kubo:``/``helia:`` store's sub-stores (its blocks, its
    datastore) that lie outside its own directory, symlinks resolved (a blocks directory
    moved to another disk): held as the store is. [] for other stores."""
    from dsbackup.datastores.registry import detect_scheme, parse_uri

    uri = os.fspath(store) if isinstance(store, (str, os.PathLike)) else getattr(store, "uri",
                                                                                 None)
    if not isinstance(uri, str) or not uri:
        return []
    scheme, loc, _ = parse_uri(uri)
    if scheme is None and os.path.isdir(loc):
        try:
            scheme = detect_scheme(loc)
        except DsBackupError:
            return []
    if scheme == "kubo":
        from dsbackup.datastores.kubo import mount_dirs

        dirs = mount_dirs(loc)
    elif scheme == "helia":
        from dsbackup.datastores.helia import BLOCKS_DIR, DATASTORE_DIR

        dirs = [Path(loc) / BLOCKS_DIR, Path(loc) / DATASTORE_DIR]
    else:
        return []
    root = Path(os.path.realpath(loc))
    out = []
    for d in dirs:
        real = Path(os.path.realpath(d))
        if real != root and root not in real.parents and real.is_dir() and real not in out:
            out.append(real)
    return out


def lock_path(store: Any) -> Path | None:
    p = store_path(store)
    return None if p is None else p.with_name(p.name + SUFFIX)


class TargetLock:
    """``with TargetLock(store, "restore"):`` — hold the store's write lock (no-op for a
    store without a filesystem path); ``shared=True``: a reader's share of it (a backup)."""

    def __init__(self, store: Any, what: str, *, create_parent: bool = True,
                 shared: bool = False, then: str = "back it up when that has finished"
                 ) -> None:
        self.path = lock_path(store)
        self.store = store_path(store)
        self.store_uri = store
        self.what = what
        # False for a store that must exist already (a migration's source): when even its
        # directory is missing there is nothing to lock, and nothing is created for it
        self.create_parent = create_parent and not shared
        self.shared = shared
        self.then = then  # what a refused reader is told to do (shared)
        self._fd = -1
        self._dir_fd = -1  # the store's directory, flocked (shared: a backup; else: a writer)
        self._nest: list[int] = []  # the directories above it (nestlock.py)

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
                if self.store is not None:  # a store above it being written: refused
                    nestlock.writer_above(self.store)  # before anything is made for it
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
            try:
                self._dir_fd = _lock_dir(self.store, fcntl.LOCK_EX)
                if self.store is not None:  # a backup or writer of a store that overlaps
                    self._nest = _track(nestlock.writer_marks(self.store, self._dir_fd))
                for d in outside_dirs(self.store_uri):  # (held the same way)
                    dfd = _lock_dir(d, fcntl.LOCK_EX)
                    self._nest += _track([dfd])
                    self._nest += _track(nestlock.writer_marks(d, dfd))
                if self.store is not None:
                    _refuse_live_repo_above(self.store)
            except BaseException:
                self._close_dir()
                self.path.unlink(missing_ok=True)  # while locked: no one else holds it
                os.close(fd)
                raise
            try:  # who holds it, for a refusal's message (a full disk: 'PID unknown')
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {self.what}\n".encode())
            except OSError:
                pass
            self._fd = fd
            _held[key] = (me, 1)

    def _acquire_shared(self) -> None:
        """A reader's hold (a backup): the lock file checked (not created: the source is not
        changed), then a shared flock on the store's directory. Refused (exit 4) while a
        writer holds either; no-op where this process writes the store itself (a migration
        backing up its own source)."""
        assert self.path is not None
        with _held_lock:
            if str(self.path) in _held:
                return
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:  # no lock file (the usual case): no writer holds it
            fd = -1
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released by the close below
            except BlockingIOError:
                raise LockedError(_busy(fd, self.store, self.path, self.then)) from None
            except OSError:  # a filesystem without flock (ENOLCK on some NFS): no writer
                pass  # can hold it either
            finally:
                os.close(fd)
        self._dir_fd = _lock_dir(self.store, fcntl.LOCK_SH, self.then)  # (a writer's since)
        if self.store is None:
            return
        try:  # a writer of a store inside it or of a directory above it: refused
            self._nest = _track(nestlock.reader_marks(self.store, self._dir_fd, self.then))
            for d in outside_dirs(self.store_uri):  # (held the same way)
                fd = _lock_dir(d, fcntl.LOCK_SH, self.then)
                self._nest += _track([fd])
                self._nest += _track(nestlock.reader_marks(d, fd, self.then))
        except BaseException:
            self._close_dir()
            raise

    def _close_dir(self) -> None:
        fd, self._dir_fd = self._dir_fd, -1
        fds, self._nest = ([fd] if fd >= 0 else []) + self._nest, []
        _dir_fds.difference_update(fds)
        # unlocked before they are closed: a child forked meanwhile shares these open files
        # (and their locks) until it has run _drop_dirs_in_child, which a loaded machine
        # may not schedule before the next restore asks for the store
        nestlock.release(fds)

    def release(self) -> None:
        if self.path is None:
            return
        key = str(self.path)
        if self.shared:
            self._close_dir()
            return
        with _held_lock:
            held = _held.get(key)
            if held is None:
                return
            if held[1] > 1:
                _held[key] = (held[0], held[1] - 1)
                return
            del _held[key]
            self._close_dir()
            if self._fd >= 0:
                try:
                    self.path.unlink(missing_ok=True)  # while locked: no one else holds it
                finally:
                    fd, self._fd = self._fd, -1
                    os.close(fd)


def _track(fds: list[int]) -> list[int]:
    fds = [fd for fd in fds if fd >= 0]
    _dir_fds.update(fds)
    return fds


def _lock_dir(store: Path | None, op: int,
              then: str = "back it up when that has finished") -> int:
    """The store's directory opened and flocked (`op`: LOCK_SH for a backup, LOCK_EX for a
    writer; not waiting), or -1 when there is none (a new store, a one-file store) or the
    filesystem has no flock. LockedError naming the holders when another process holds it
    the other way."""
    if store is None:
        return -1
    try:
        fd = os.open(store, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
    except BlockingIOError:
        holders = lock_holders(os.fstat(fd))
        writer = op == fcntl.LOCK_SH
        if not writer:  # held shared (backups) or exclusive (a writer by another path)?
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                writer = True
        os.close(fd)
        pids = ", ".join(f"PID {p}" for p in sorted(set(holders or ())) if p != os.getpid())
        if op == fcntl.LOCK_EX and not writer:
            raise LockedError(f"{store}: a dsbackup backup ({pids or 'another process'}) is "
                              "reading it; wait for it to finish") from None
        if op == fcntl.LOCK_EX:
            raise LockedError(f"{store}: another dsbackup process ({pids or 'PID unknown'}) "
                              "is writing to it; wait for it to finish") from None
        raise LockedError(f"{store}: another dsbackup process ({pids or 'PID unknown'}) is "
                          f"writing to it; {then}") from None
    except OSError:  # no flock here (ENOLCK on some NFS): nobody can hold it either
        os.close(fd)
        return -1
    _dir_fds.add(fd)
    return fd


def _busy(fd: int, store: Path | None, path: Path | None, then: str) -> str:
    """The one line of a refusal by the lock file's holder (a restore or migration)."""
    return (f"{store}: another dsbackup process ({_read_holder(fd)}) is writing to it; {then} "
            f"(lock file {path})")


def _refuse_live_repo_above(store: Path) -> None:
    """LockedError when `store` lies inside a Kubo repository whose daemon is running (its
    ``repo.lock`` held): ``restore A flatfs:REPO/blocks`` wrote under the live node. (A
    ``kubo:REPO`` target itself is refused when opened, datastores/kubo.py.)"""
    from dsbackup.datastores.kubolock import LOCK_FILE, SPEC_FILE, probe_repo_lock

    for up in Path(os.path.realpath(store)).parents:
        if not ((up / LOCK_FILE).is_file() and (up / SPEC_FILE).is_file()):
            continue
        try:
            held = probe_repo_lock(up)
        except LockedError:
            raise LockedError(f"{store}: inside the Kubo repo {up}, whose daemon is running "
                              f"({LOCK_FILE} is held); stop the daemon first") from None
        except DsBackupError:
            continue
        if held is not None:
            held.release()
