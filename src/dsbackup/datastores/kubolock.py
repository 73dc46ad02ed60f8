"""A Kubo repository's lock and spec file names, and the probe of its daemon's lock.

Apart from datastores/kubo.py so that the restore's check for a live repository above its
target (engine/targetlock.py) does not import the Kubo datastore with its mounts and flatfs
layout checks on every restore (~3 ms of start-up; docs/PERFORMANCE.md).
"""

from __future__ import annotations

import os

from dsbackup.datastores.sharedlock import SharedLock, hold_shared

LOCK_FILE = "repo.lock"
SPEC_FILE = "datastore_spec"


def probe_repo_lock(repo: str | os.PathLike[str]) -> SharedLock | None:
    """Take a shared POSIX lock on ``repo.lock`` (process-wide, sharedlock.py: the caller
    releases its share) or None when there is no lock file. Raises :class:`LockedError` if a
    daemon holds it."""
    return hold_shared(
        os.path.join(os.fspath(repo), LOCK_FILE),
        busy=f"{repo}: Kubo repo is locked ({LOCK_FILE} is held, is the daemon running?); "
             "stop the daemon first (the API's allow_live=True reads it anyway)",
        busy_here=f"{repo}: Kubo repo is locked by this process ({LOCK_FILE} is held: a "
                  "daemon or Kubo library runs in it)")
