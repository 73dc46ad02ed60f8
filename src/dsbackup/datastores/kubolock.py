"""A Kubo repository's lock and spec file names, and the probe of its daemon's lock.

Apart from datastores/kubo.py so that the restore's check for a live repository above its
target (engine/targetlock.py) does not import the Kubo datastore with its mounts and flatfs
layout checks on every restore (~3 ms of start-up; docs/PERFORMANCE.md).
"""

from __future__ import annotations

import errno
import fcntl
import os

from dsbackup.errors import DatastoreError, LockedError

LOCK_FILE = "repo.lock"
SPEC_FILE = "datastore_spec"


def probe_repo_lock(repo: str | os.PathLike[str]) -> int | None:
    """Take a shared POSIX lock on ``repo.lock`` and return its fd (caller closes it), or
    None when there is no lock file. Raises :class:`LockedError` if a daemon holds it."""
    path = os.path.join(os.fspath(repo), LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise LockedError(
                f"{repo}: Kubo repo is locked ({LOCK_FILE} is held, is the daemon running?); "
                "stop the daemon first (the API's allow_live=True reads it anyway)") from None
        raise DatastoreError(f"{path}: cannot probe lock: {e}") from e
    return fd
