"""A shared lock on another program's lock file (Kubo's ``repo.lock``, LevelDB's ``LOCK``),
held once per process however many stores or threads hold it.

Kubo and LevelDB's C++ library say "open" with a POSIX record lock (``fcntl``), goleveldb with
``flock``; a probe takes the shared kind of both, so a writer cannot start while we read. POSIX
record locks belong to the process, and **any** ``close()`` of **any** descriptor of the file
drops all of them: so the file is opened once per process and closed only when its last holder
releases it (two readers of one repo each closing their own descriptor dropped the lock the
other still relied on), and a file that this process already holds a POSIX lock on by other
means (a LevelDB this process has open, through plyvel or a writable ``leveldb:`` store) is
not opened at all: it is refused, since opening and closing it would drop that lock and let
another process open the store beside its writer.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading

from dsbackup.errors import DatastoreError, LockedError
from dsbackup.storage.locktable import lock_holders

__all__ = ["SharedLock", "hold_shared"]

_held: dict[tuple[int, int], list[int]] = {}  # (st_dev, st_ino) -> [fd, holders]
_guard = threading.Lock()


def _drop_in_child() -> None:
    # a forked child inherits the descriptors, not the POSIX locks: it holds nothing
    for fd, _ in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_drop_in_child)


class SharedLock:
    """One holder's share of a process-wide shared lock; ``release()`` once."""

    def __init__(self, key: tuple[int, int]) -> None:
        self._key: tuple[int, int] | None = key

    def release(self) -> None:
        with _guard:
            key, self._key = self._key, None
            entry = _held.get(key) if key is not None else None
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]  # type: ignore[arg-type]
                os.close(entry[0])  # the last holder: closing drops the locks


def hold_shared(path: str | os.PathLike[str], *, busy: str, busy_here: str,
                flock: bool = False) -> SharedLock | None:
    """A shared POSIX lock (and a shared ``flock`` with ``flock=True``) on the file `path`, or
    None when there is no such file. LockedError(`busy`) when another process holds it
    exclusively, LockedError(`busy_here`) when this process holds a POSIX lock on it that is
    not ours (see the module's docstring)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DatastoreError(f"{path}: cannot read the lock file: {exc}") from None
    key = (st.st_dev, st.st_ino)
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
            return SharedLock(key)
        if os.getpid() in (lock_holders(st, kind=b"POSIX") or ()):
            raise LockedError(busy_here)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DatastoreError(f"{path}: cannot read the lock file: {exc}") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            if flock:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise LockedError(busy) from None
            raise DatastoreError(f"{path}: cannot probe the lock: {exc}") from None
        _held[(st.st_dev, st.st_ino)] = [fd, 1]
        return SharedLock(key)
