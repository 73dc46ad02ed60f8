"""Room for LMDB's lock file before LMDB maps it (no py-lmdb import: the native restore uses
it too)."""

from __future__ import annotations

import contextlib
import os

from dsbackup.errors import DatastoreError

__all__ = ["reserve_lock_file"]

LOCK_FILE_BYTES = 8192  # LMDB's lock.mdb for its default 126 readers


def reserve_lock_file(path: str | os.PathLike[str]) -> None:
    """Allocate the blocks of ``PATH/lock.mdb`` before LMDB opens it for writing. LMDB
    sizes that file with ftruncate and writes its reader table through a shared map: on a
    full filesystem the first store to that map killed the process with SIGBUS (no message,
    exit -7). A DatastoreError naming the filesystem instead; a lock file this call made and
    could not fill is removed."""
    lock = os.path.join(os.fspath(path), "lock.mdb")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        made = True
    except FileExistsError:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return  # (LMDB's open says what is wrong)
        made = False
    except OSError:
        return
    try:
        # an existing lock file keeps its size: another process may map it, and its reader
        # table's size is what every opener after the first reads from it
        size = os.fstat(fd).st_size or LOCK_FILE_BYTES
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        from dsbackup.diskspace import is_no_space, no_space_message

        if made:
            with contextlib.suppress(OSError):
                os.unlink(lock)
        if is_no_space(e):
            raise DatastoreError(no_space_message(path)) from None
        # (a filesystem without fallocate, EOPNOTSUPP: left to LMDB as before)
    finally:
        os.close(fd)
