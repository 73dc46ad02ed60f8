"""The process-wide registry of open LMDB environments (one process never opens one twice).

liblmdb in the native modules and py-lmdb are separate copies of LMDB, and LMDB's POSIX locks
are per process, so one process must never open the same environment twice (through the
native scanner or through py-lmdb). The scanner (lmdbscan.pyx) claims each environment it
opens here and refuses a second open; callers register the environments they open with py-lmdb
(or the native writer, lmdbwrite.pyx) through :func:`register_foreign_open` /
:func:`unregister_foreign_open` so the guard covers both. In a child after ``fork`` the
registry is emptied (environments are never used across fork).
"""

import os
import threading

from dsbackup.errors import DatastoreError


class DoubleOpenError(DatastoreError, RuntimeError):
    """The environment is already open in this process (here or through py-lmdb) (exit 2)."""

    description = "LMDB environment already open in this process"


_lock = threading.Lock()
_own: set = set()
_foreign: dict = {}


def env_key(path) -> str:
    """Registry key of an environment: the real path of its data file."""
    p = os.fspath(path)
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    if os.path.isdir(p):
        p = os.path.join(p, "data.mdb")
    return os.path.realpath(p)


def claim_own(path, str what) -> str:
    """Record that a native ``what`` (e.g. "LmdbRangeScanner") opens ``path``; returns the key
    to give back to :func:`release_own`. Raises DoubleOpenError if it is open already."""
    key = env_key(path)
    with _lock:
        if key in _own or key in _foreign:
            raise DoubleOpenError(
                f"{os.fsdecode(os.fspath(path))}: LMDB environment is already open in this "
                f"process ({'py-lmdb' if key in _foreign else 'another ' + what}); "
                "one process must never open an environment twice")
        _own.add(key)
    return key


def release_own(str key, bint locked=True) -> None:
    """Undo :func:`claim_own` (``locked=False``: from a finalizer, without the lock)."""
    if locked:
        with _lock:
            _own.discard(key)
    else:
        _own.discard(key)


def register_foreign_open(path) -> None:
    """Record that this process opened ``path`` with py-lmdb (may be called repeatedly)."""
    key = env_key(path)
    with _lock:
        if key in _own:
            raise DoubleOpenError(f"{path}: LMDB environment is already open in this process "
                                  "(dsbackup._ext.lmdbscan)")
        _foreign[key] = _foreign.get(key, 0) + 1


def unregister_foreign_open(path) -> None:
    """Undo one :func:`register_foreign_open` of ``path``."""
    key = env_key(path)
    with _lock:
        n = _foreign.get(key, 0)
        if n <= 1:
            _foreign.pop(key, None)
        else:
            _foreign[key] = n - 1


def open_environments() -> list:
    """Registry keys of the environments open in this process (own and foreign)."""
    with _lock:
        return sorted(_own | set(_foreign))


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    _own.clear()
    _foreign.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
