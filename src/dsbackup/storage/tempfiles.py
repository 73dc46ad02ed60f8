"""Temporary archive names beside the destination, and cleanup of ones left by dead writers.

A writer streams to `.<final name>.tmp-<pid>-<random>` in the destination directory, holding an
exclusive `flock` on it while it writes, and renames it into place only when complete, so the
final path never holds a partial archive. A temp file whose writer is gone (its PID no longer
exists, or the file predates the last boot, and nobody holds its lock) is a leftover of a killed run; the next writer in that
directory removes it, whatever final name it was meant for (scheduled runs write a new name
each time). A live writer's file is never removed: its lock is held, and its PID exists.

A final name too long for that (over TEMP_STEM_ROOM = 229 bytes: a name may have 255) is
shortened in the temp name, as in hold names (storage/holds.py): :func:`name_stem`.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import stat
from pathlib import Path

from dsbackup.storage.locktable import lock_holders

log = logging.getLogger(__name__)


NAME_MAX = 255  # bytes in a file name (Linux filesystems)
PID_DIGITS = 7  # pid_max is at most 4194304
# `.STEM.tmp-PID-RANDOM`: the room left for the stem
TEMP_STEM_ROOM = NAME_MAX - len(".") - len(".tmp-") - PID_DIGITS - len("-") - 12


def name_stem(name: str, room: int) -> str:
    """`name` as it appears in a temp or hold file name that leaves it `room` bytes: itself
    when it fits (the names all versions have used), else its first bytes (cut at a
    character), "~" and 16 hex digits of its SHA-256, unique to it."""
    raw = os.fsencode(name)
    if len(raw) <= room:
        return name
    import hashlib  # (not on the reading commands' path: start-up, docs/PERFORMANCE.md)

    cut = raw[: room - 17]
    try:
        raw.decode("utf-8")
        visible = cut.decode("utf-8", "ignore")  # (drops only a character cut in two)
    except UnicodeDecodeError:  # a name of other bytes: cut as bytes
        visible = os.fsdecode(cut)
    return f"{visible}~{hashlib.sha256(raw).hexdigest()[:16]}"


def temp_prefix(final: Path) -> str:
    """What every temp file name of the archive `final` starts with: `.STEM.tmp-`."""
    return f".{name_stem(final.name, TEMP_STEM_ROOM)}.tmp-"


def temp_stem(temp_name: str) -> str:
    """The final name's stem in a temp file's name (the final name itself unless it was
    too long: name_stem)."""
    return temp_name[1:].rsplit(".tmp-", 1)[0]


def temp_path_for(final: Path) -> Path:
    return final.with_name(f"{temp_prefix(final)}{os.getpid()}-{os.urandom(6).hex()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _boot_time() -> float | None:
    """When the system booted (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


_TEMP_NAME = re.compile(r"^\..+\.tmp-(?P<pid>\d+)-[0-9a-f]{12}$")


def lock_temp_file(fd: int) -> None:
    """Mark the open temp file as having a live writer (released when the fd is closed or the
    process dies)."""
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlocked(path: Path) -> int | None:
    """An fd holding the lock of `path` when no writer holds it, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def stale_temp_files(directory: Path) -> list[Path]:
    """Archive temp files in `directory` whose writer is gone: no process holds the file's
    lock, and its PID does not exist or the file was last written before the system booted
    (the PID was reused)."""
    stale = []
    boot = _boot_time()
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for name in names:
        m = _TEMP_NAME.match(name)
        if not m:
            continue
        pid = int(m.group("pid"))
        path = directory / name
        if pid == os.getpid():
            continue
        if _pid_alive(pid):
            try:
                if boot is None or path.lstat().st_mtime >= boot:
                    continue
            except OSError:
                continue
        fd = _unlocked(path)
        if fd is not None:
            os.close(fd)
            stale.append(path)
    return stale


def live_writer(final: Path) -> tuple[int, Path] | None:
    """(PID, temp file) of another process writing an archive to `final` right now: its temp
    file's lock is held and its PID exists; None when there is none.

    A temp file this process may not open (another user's, mode 0600) cannot be test-locked:
    the kernel's lock table (/proc/locks) says whether anyone holds a lock on it, so a
    leftover whose PID was reused by an unrelated process is not taken for a writer (the
    backup it refused would never run). Without that table, a file written before the last
    boot is a leftover, any other one a writer. A name that is no regular file (a symlink, a
    FIFO) is no writer's."""
    prefix = temp_prefix(final)
    try:
        names = [n for n in os.listdir(final.parent) if n.startswith(prefix)]
    except OSError:
        return None
    for name in names:
        m = _TEMP_NAME.match(name)
        if not m or int(m.group("pid")) == os.getpid():
            continue
        if _held(final.parent / name, int(m.group("pid"))):
            return int(m.group("pid")), final.parent / name
    return None


def live_temp_files(directory: Path) -> list[tuple[int, Path]]:
    """(PID, temp file) of every archive being written in `directory` right now, whatever its
    final name, this process's own writers (other threads) included: the test of
    :func:`live_writer` (the file's lock is held and its PID exists). A dead writer's
    leftover is not listed. Prune keeps the parent of each (docs/CLI.md `prune`). The PID need
    not exist: a `backup --resume` continues a dead writer's file under its name, holding its
    lock (a test lock taken by another process at that instant only keeps more)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    out = []
    for name in names:
        m = _TEMP_NAME.match(name)
        if m and _held(directory / name, int(m.group("pid")), by_pid=False):
            out.append((int(m.group("pid")), directory / name))
    return out


def held_by_someone(path: Path) -> bool:
    """Whether some process holds the `flock` of the regular file `path` (another user's
    file, which this process may not open: per /proc/locks). A hold (dsbackup.storage.holds)
    is judged so."""
    return _held(path, 0, by_pid=False)


def _held(path: Path, pid: int, *, by_pid: bool = True) -> bool:
    """Whether the temp file `path`, named with `pid`, is being written: `pid` exists (unless
    not `by_pid`) and someone holds the file's lock (a new open file description cannot take
    it, even in this process)."""
    if by_pid and not _pid_alive(pid):
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:  # renamed into place or removed meanwhile
        return False
    except OSError as exc:
        return exc.errno != errno.ELOOP and _locked_unopened(path)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: a writer has it open
        return path.exists()
    finally:
        os.close(fd)  # (a test lock taken here goes with it)
    return False


def _locked_unopened(path: Path) -> bool:
    """Whether some process holds a lock on `path`, a file this process cannot open: per
    /proc/locks (matched by inode: a match on another filesystem errs towards 'locked'), else
    unless it was last written before the system booted."""
    try:
        st = path.lstat()
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    holders = lock_holders(st)
    if holders is None:
        boot = _boot_time()
        return boot is None or st.st_mtime >= boot
    return bool(holders)


def remove_stale_temp_files(final: Path) -> list[Path]:
    """Remove the temp files of dead writers in `final`'s directory (any final name)."""
    removed = []
    for p in stale_temp_files(final.parent):
        fd = _unlocked(p)  # checked again, holding the lock while the name goes
        if fd is None:
            continue
        try:
            p.unlink()
            removed.append(p)
            log.info("removed leftover temporary file %s of an interrupted run", p)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove leftover temporary file %s: %s", p, exc)
        finally:
            os.close(fd)
    return removed


def fsync_dir(path: str | bytes | os.PathLike[str] | os.PathLike[bytes], *,
              best_effort: bool = False) -> None:
    """Make the entries of directory `path` durable (a file created, renamed or removed in it).

    The one copy for the whole package (datastores, compat, engine and migration import it).
    An error opening or syncing the directory is raised as the ``OSError`` it is, except with
    ``best_effort=True``: a directory that cannot be opened is then skipped silently (an
    error from ``fsync`` itself is still raised). The migration journal, version stamp and
    Kubo repository files use it, as they always have: the file operation before it has
    succeeded, and the directory may allow writing but not reading (mode ``-wx``).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    except OSError:
        if best_effort:
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
