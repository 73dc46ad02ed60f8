"""The spill directory of a flatfs listing over ``max_names`` names (docs/DATASTORES.md,
"Listing a large flatfs store").

A listing that spills makes ``.dsbackup-spill-<pid>-<random>/`` in the spill root (the
flatfs URI's ``spill_dir=``, else ``$TMPDIR``, else ``/tmp``) and holds an exclusive
``flock`` on its ``lock`` file while it lives. The directory is removed when the listing
ends, fails or is interrupted; one left by a killed process (its lock free again: the
kernel drops a dead process's locks) is removed by the next listing that spills into the
same root. Nothing is ever written in the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time

from dsbackup._forkfds import closed_in_child
from dsbackup.errors import DatastoreError

__all__ = ["SPILL_PREFIX", "SpillDir", "remove_stale", "spill_root"]

SPILL_PREFIX = ".dsbackup-spill-"
LOCK_FILE = "lock"
# a spill directory without its lock file is being created (or its creator died at once):
# left alone this long
_YOUNG_S = 60.0
# lock descriptors this process holds: a forked child closes its copies at once, so that a
# worker outliving a SIGKILLed listing does not keep its spill directory locked (live)
_HELD = closed_in_child()


def spill_root(configured: str | None) -> str:
    """Where spill directories go: ``configured``, else ``$TMPDIR``, else ``/tmp``."""
    return configured or tempfile.gettempdir()


def _owner_gone(path: str) -> bool:
    """The process that made spill directory ``path`` has ended."""
    try:
        fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        try:
            pid = int(os.path.basename(path)[len(SPILL_PREFIX):].split("-")[0])
            young = time.time() - os.stat(path).st_mtime < _YOUNG_S
        except (ValueError, OSError):
            return False
        if young:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False
    except OSError:
        return False  # another user's, or unreadable: not ours to judge
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: its listing is running
    finally:
        os.close(fd)
    return True


def remove_stale(root: str) -> int:
    """Remove the spill directories in ``root`` whose process has ended (best effort);
    how many were removed."""
    removed = 0
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    for e in entries:
        if not e.name.startswith(SPILL_PREFIX):
            continue
        try:
            if not e.is_dir(follow_symlinks=False):
                continue
        except OSError:
            continue
        if _owner_gone(e.path):
            shutil.rmtree(e.path, ignore_errors=True)
            removed += not os.path.exists(e.path)
    return removed


class SpillDir:
    """A private spill directory, locked while open; removed by :meth:`close`."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.path = ""
        self.fd = -1
        self._lock = -1

    def open(self) -> SpillDir:
        remove_stale(self.root)
        try:
            self.path = tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-", dir=self.root)
            # locked before it is named "lock": another listing's clean-up never sees the
            # lock file free while this process lives (it sees a young directory without one)
            tmp = os.path.join(self.path, LOCK_FILE + ".new")
            self._lock = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
            _HELD.add(self._lock)
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(tmp, os.path.join(self.path, LOCK_FILE))
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            self.close()
            raise DatastoreError(
                f"{self.root}: cannot make the spill directory of a flatfs listing: "
                f"{e.strerror or e} (set TMPDIR, or the flatfs URI's spill_dir=, to a "
                "writable directory with room; docs/DATASTORES.md)") from None
        return self

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.path:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = self.path if os.path.exists(self.path) else ""
        if self._lock >= 0:
            _HELD.discard(self._lock)
            with contextlib.suppress(OSError):
                os.close(self._lock)
            self._lock = -1

    def __enter__(self) -> SpillDir:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
