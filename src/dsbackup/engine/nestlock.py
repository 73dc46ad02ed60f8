"""Overlapping stores: a backup and a writer (restore, migration) of stores whose paths
overlap — the same path, or one inside the other (``flatfs:REPO/blocks`` and ``kubo:REPO``,
``sqlite:DIR/x.db`` and ``fsds:DIR``) — exclude each other, in both orders (exit 4).

targetlock.py holds a store's own directory with ``flock`` (a backup shared, a writer
exclusive). That cannot see a store inside another, nor a one-file store (``sqlite:``: a
lock on the database file would meet SQLite's own locks, and closing a descriptor of it
would drop them). So, on the directories above a store (its resolved path's ancestors), and
creating nothing:

- a backup holds a shared ``flock`` on every ancestor: a writer of one (its exclusive
  ``flock``) is refused while a store inside it is read, and the backup is refused while an
  ancestor is being written (the ancestor's exclusive ``flock`` or lock file held);
- marks find the other overlaps: byte-range read locks of the open directory
  (``F_OFD_SETLK``: per open file, independent of ``flock``, on no file's data) at an offset
  that says what and whose — ``WRITER_BELOW + pid`` on every ancestor of a store being
  written, ``BACKUP_HERE + pid`` on a directory being backed up, and on a store's parent
  ``WRITER_NAMED``/``BACKUP_NAMED + slot(name) + pid`` (the store itself, whatever it is).
  Read locks never conflict, so marks stop no one: each side sets its marks and then tests
  (``F_OFD_GETLK``) for the other's, so of two starting at once at least one sees the other
  (both may: both exit 4, and a rerun works). The offset names the holder's PID.

Two writers of stores that overlap exclude each other the same way: a writer tests the
directories above its store for a writer's lock file or exclusive ``flock`` (a writer of a
store holding it), its store's directory for ``WRITER_BELOW`` (a writer of a store inside
it) and its parent for ``WRITER_NAMED`` (the same store by another path), after its own
marks and lock file are set. A writer's own other stores (a migration writing two) are not
counted: the probes skip this process's PID.

The kernel drops all of these with their holder's descriptors (a killed run leaves nothing).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import zlib
from pathlib import Path

from dsbackup.errors import LockedError
from dsbackup.storage.locktable import lock_holders

__all__ = ["SUFFIX", "read_holder", "reader_marks", "release", "writer_above",
           "writer_marks"]

SUFFIX = ".dsbackup.lock"  # a writer's lock file beside its store (targetlock.py)

_PIDS = 1 << 23  # (Linux pids are below 2^22)
WRITER_BELOW = 1 << 32  # + pid
BACKUP_HERE = 2 << 32  # + pid
WRITER_NAMED = 1 << 56  # + slot(name) * _PIDS + pid
BACKUP_NAMED = 1 << 57
_FLOCK = "hhqqi4x"  # struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid


def _slot(name: str) -> int:
    return (zlib.crc32(os.fsencode(name)) & ((1 << 28) - 1)) * _PIDS


def _open_dir(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:  # missing or not readable (a 0711 home): nothing held there
        return -1


def _mark(fd: int, base: int) -> None:
    with contextlib.suppress(OSError):  # a filesystem without such locks: no one has them
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK,
                    struct.pack(_FLOCK, fcntl.F_RDLCK, os.SEEK_SET, base + os.getpid(), 1, 0))


def _probe(fd: int, base: int) -> int | None:
    """The PID of another open file's mark in [base, base + 2^23), or None."""
    try:
        got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK,
                          struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, base, _PIDS, 0))
    except OSError:
        return None
    kind, _, start, _, _ = struct.unpack(_FLOCK, got)
    return None if kind == fcntl.F_UNLCK else start - base


def _probe_other(fd: int, base: int) -> int | None:
    """As `_probe`, this process's own mark (another store it writes) left out."""
    me = os.getpid()
    for start, length in ((base, me), (base + me + 1, _PIDS - me - 1)):
        try:
            got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK,
                              struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, start, length, 0))
        except OSError:
            continue
        kind, _, at, _, _ = struct.unpack(_FLOCK, got)
        if kind != fcntl.F_UNLCK:
            return at - base
    return None


def writing_below(pid: int, under: Path) -> str:
    """' (STORE)' when process `pid` holds the lock file of a store inside `under` (read
    from /proc/PID/fd: a process of this user), else ''."""
    prefix = str(under).rstrip("/") + "/"
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return ""
    for n in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{n}")
        except OSError:
            continue
        if target.endswith(SUFFIX) and target.startswith(prefix):
            return f" ({target[:-len(SUFFIX)]})"
    return ""


def release(fds: list[int]) -> None:
    """Unlock and close: unlocked first, as a forked child may share these open files."""
    for fd in fds:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK,
                        struct.pack(_FLOCK, fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0))
        with contextlib.suppress(OSError):
            os.close(fd)


def _ancestors(store: Path) -> tuple[str, list[tuple[Path, int]]]:
    """The store's resolved name and its ancestors (nearest first), each opened (-1: not)."""
    real = Path(os.path.realpath(store))
    return real.name, [(up, _open_dir(up)) for up in real.parents]


def writer_marks(store: Path, dir_fd: int = -1) -> list[int]:
    """Mark the directories above `store` (its directory open as `dir_fd`, -1 for a new or
    one-file store), about to be written; LockedError when it or a directory above it is
    being backed up, or another process writes it (by another path), a store inside it or a
    store above it. The descriptors to `release` (not `dir_fd`)."""
    name, ups = _ancestors(store)
    fds = [fd for _, fd in ups if fd >= 0]
    try:
        for i, (_, fd) in enumerate(ups):
            if fd >= 0:
                _mark(fd, WRITER_BELOW)
                if i == 0 and name:
                    _mark(fd, WRITER_NAMED + _slot(name))
        for i, (up, fd) in enumerate(ups):
            pid = None if fd < 0 or i or not name else _probe(fd, BACKUP_NAMED + _slot(name))
            if pid is not None:
                raise LockedError(f"{store}: a dsbackup backup (PID {pid}) is reading it; "
                                  "wait for it to finish")
            pid = None if fd < 0 else _probe(fd, BACKUP_HERE)
            if pid is not None:
                raise LockedError(f"{store}: a dsbackup backup (PID {pid}) is reading it "
                                  f"(as part of {up}); wait for it to finish")
        pid = None if not ups or ups[0][1] < 0 or not name \
            else _probe_other(ups[0][1], WRITER_NAMED + _slot(name))
        if pid is not None:
            raise LockedError(f"{store}: another dsbackup process (PID {pid}) is writing to "
                              "it (by another path); wait for it to finish")
        pid = None if dir_fd < 0 else _probe_other(dir_fd, WRITER_BELOW)
        if pid is not None:
            real = Path(os.path.realpath(store))
            raise LockedError(f"{store}: another dsbackup process (PID {pid}) is writing to "
                              f"a store inside it{writing_below(pid, real)}; wait for it to "
                              "finish")
        _refuse_writer_above(store, ups, "wait for it to finish", own=True)
    except BaseException:
        release(fds)
        raise
    return fds


def writer_above(store: Path) -> None:
    """LockedError when another process writes a store that holds `store` (its lock file
    or its directory's exclusive ``flock`` held): tested before a writer creates anything
    for `store` (the directories of its lock file); writer_marks tests again."""
    _, ups = _ancestors(store)
    try:
        _refuse_writer_above(store, ups, "wait for it to finish", own=True)
    finally:
        release([fd for _, fd in ups if fd >= 0])


def _refuse_writer_above(store: Path, ups: list[tuple[Path, int]], then: str, *,
                         own: bool = False) -> None:
    """LockedError when a directory above `store` is being written: a writer of a new store
    holds its lock file, a writer of an existing one its exclusive ``flock`` (probed with a
    shared one, released at once when `own`, else kept: a backup's hold). `own`: this
    process's own locks do not count."""
    me = os.getpid()
    for up, fd in ups:
        holder = None
        if up.name:  # a writer of a new store above: its lock file, held
            with contextlib.suppress(OSError):
                lfd = os.open(up.with_name(up.name + SUFFIX),
                              os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
                try:
                    fcntl.flock(lfd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = read_holder(lfd)
                    if own and holder.split(",")[0] == f"PID {me}":
                        holder = None
                finally:
                    os.close(lfd)
        if holder is None and fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                if own:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                pids = sorted(set(lock_holders(os.fstat(fd)) or ()))
                if not (own and pids == [me]):
                    holder = ", ".join(f"PID {p}" for p in pids) or "PID unknown"
            except OSError:  # no flock here (ENOLCK on some NFS): no writer holds it
                pass
        if holder is not None:
            raise LockedError(f"{store}: another dsbackup process ({holder}) is writing "
                              f"to {up}, which holds it; {then}")


def reader_marks(store: Path, dir_fd: int,
                 then: str = "back it up when that has finished") -> list[int]:
    """Mark `store` (its directory open as `dir_fd`, -1 for a one-file store) as being backed
    up and share every directory above it; LockedError when it, a store inside it or a
    directory above it is being written. The descriptors to `release` (not `dir_fd`)."""
    name, ups = _ancestors(store)
    fds = [fd for _, fd in ups if fd >= 0]
    try:
        if ups and ups[0][1] >= 0 and name:
            _mark(ups[0][1], BACKUP_NAMED + _slot(name))
        if dir_fd >= 0:
            _mark(dir_fd, BACKUP_HERE)
        pid = None if not ups or ups[0][1] < 0 or not name \
            else _probe(ups[0][1], WRITER_NAMED + _slot(name))
        if pid is not None:
            raise LockedError(f"{store}: another dsbackup process (PID {pid}) is writing to "
                              f"it; {then}")
        pid = None if dir_fd < 0 else _probe(dir_fd, WRITER_BELOW)
        if pid is not None:
            real = Path(os.path.realpath(store))
            raise LockedError(f"{store}: another dsbackup process (PID {pid}) is writing to "
                              f"a store inside it{writing_below(pid, real)}; {then}")
        _refuse_writer_above(store, ups, then)
    except BaseException:
        release(fds)
        raise
    return fds


def read_holder(fd: int) -> str:
    """The PID and purpose a writer's lock file (open as `fd`) names."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split("\n")[0].split()
    except OSError:
        text = []
    if text and text[0].isdigit():
        return f"PID {text[0]}" + (f", {' '.join(text[1:])}" if len(text) > 1 else "")
    return "PID unknown"
