"""A private copy of a LevelDB directory, so that reading it never writes to the original.

Opening LevelDB always recovers its write-ahead log: the log is replayed into a new table,
a new log and MANIFEST are written, ``CURRENT`` and ``LOG`` are rewritten and the old files
removed, even when the caller only reads. A read-only open therefore opens a snapshot: a
private temporary directory (under ``TMPDIR``) holding hard links to the immutable table files
(``*.ldb``, ``*.sst``; copies when linking is not possible, e.g. across filesystems) and
copies of everything else LevelDB reads (``CURRENT``, ``MANIFEST-*``, ``*.log``). Nothing is
created, changed or locked in the original directory.

While the snapshot is taken the original's ``LOCK`` file is probed (LevelDB's C++ library
holds a POSIX lock on it, goleveldb an ``flock``): a directory another process has open is
refused with :class:`LockedError`, as opening it would be, and a shared lock is held during
the copy so no writer can start in the middle of it. A LevelDB this process itself has open
is refused too, without opening its ``LOCK`` (sharedlock.py: closing it would drop LevelDB's
own lock).

goleveldb (Kubo's ``levelds``) switches manifests by writing ``CURRENT.<N>`` and renaming it
over ``CURRENT``; stopped in between, it leaves the pending file, and its next open takes the
newest valid one of ``CURRENT`` and ``CURRENT.<N>`` (a line ``MANIFEST-<n>`` naming a manifest
that exists) and renames it into place. The snapshot does the same in its copy
(:func:`effective_current`), so it reads the state goleveldb would open, also when the
pending file is all there is; the original is not touched.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from dsbackup.datastores.sharedlock import SharedLock, hold_shared
from dsbackup.diskspace import TMPDIR_HINT, is_no_space, no_space_message
from dsbackup.errors import DatastoreError

__all__ = ["take_snapshot", "remove_snapshot"]

_IMMUTABLE = (".ldb", ".sst")
_SKIP = {"LOCK", "LOG", "LOG.old"}  # the lock and LevelDB's human-readable info logs
_PENDING = re.compile(r"CURRENT\.[0-9]+")  # goleveldb's CURRENT before its rename
_MANIFEST_LINE = re.compile(rb"MANIFEST-([0-9]+)\n")


def effective_current(names: list[str], read: Callable[[str], bytes]) -> str | None:
    """The file goleveldb takes as ``CURRENT`` among `names` (a directory's): of ``CURRENT``
    and the pending ``CURRENT.<N>``, the valid one naming the newest manifest that exists
    (``CURRENT`` on a tie); None when none is valid. `read(name)` gives a file's bytes."""
    best: tuple[int, int, str] | None = None
    for name in names:
        if name != "CURRENT" and not _PENDING.fullmatch(name):
            continue
        try:
            m = _MANIFEST_LINE.fullmatch(read(name))
        except OSError:
            continue
        if m is None or f"MANIFEST-{m.group(1).decode()}" not in names:
            continue
        rank = (int(m.group(1)), name == "CURRENT", name)
        if best is None or rank > best:
            best = rank
    return None if best is None else best[2]


def _lock_shared(path: Path) -> SharedLock | None:
    """A shared lock on ``path/LOCK`` (both lock kinds, sharedlock.py), or LockedError; None
    without LOCK. A LevelDB this process has open itself is refused too: probing its LOCK
    would drop LevelDB's own lock (POSIX locks go with any close of the file)."""
    return hold_shared(path / "LOCK", flock=True,
                       busy=f"{path}: LevelDB is locked by another process (is the Kubo "
                            "daemon running?)",
                       busy_here=f"{path}: LevelDB is open in this process (close it "
                                 "before reading it as another store)")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def take_snapshot(path: Path) -> Path:
    """Copy the LevelDB at ``path`` into a new private directory and return it."""
    if not (path / "CURRENT").is_file() and not any(
            _PENDING.fullmatch(n) for n in _names(path)):
        raise DatastoreError(f"{path}: no LevelDB database (CURRENT missing)")
    held = _lock_shared(path)
    snap = Path(tempfile.mkdtemp(prefix="dsbackup-leveldb-"))
    try:
        for entry in os.scandir(path):
            if entry.name in _SKIP or not entry.is_file(follow_symlinks=False):
                continue
            src, dst = path / entry.name, snap / entry.name
            if entry.name.endswith(_IMMUTABLE):
                _link_or_copy(src, dst)
            else:
                shutil.copyfile(src, dst)
        _settle_current(snap)
        if not (snap / "CURRENT").is_file():
            raise DatastoreError(f"{path}: no LevelDB database (CURRENT missing, and no "
                                 "pending CURRENT.<N> names a manifest that is there)")
    except OSError as exc:
        shutil.rmtree(snap, ignore_errors=True)
        if is_no_space(exc):  # (copies: TMPDIR on another filesystem than the store)
            raise DatastoreError(f"{path}: cannot take a snapshot of the LevelDB: "
                                 + no_space_message(snap.parent, what=TMPDIR_HINT)) from None
        raise DatastoreError(f"{path}: cannot take a snapshot of the LevelDB: {exc}") from None
    except BaseException:
        shutil.rmtree(snap, ignore_errors=True)
        raise
    finally:
        if held is not None:
            held.release()
    return snap


def _names(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _settle_current(snap: Path) -> None:
    """In the copy: goleveldb's pending ``CURRENT.<N>`` put in place as it would on its next
    open (effective_current), the other pending files dropped (LevelDB ignores them)."""
    names = _names(snap)
    pending = [n for n in names if _PENDING.fullmatch(n)]
    if not pending:
        return
    chosen = effective_current(names, lambda n: (snap / n).read_bytes())
    if chosen is not None and chosen != "CURRENT":
        os.replace(snap / chosen, snap / "CURRENT")
    for n in pending:
        if n != chosen:
            (snap / n).unlink(missing_ok=True)


def remove_snapshot(snap: Path) -> None:
    shutil.rmtree(snap, ignore_errors=True)
