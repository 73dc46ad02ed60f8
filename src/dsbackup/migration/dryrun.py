"""Opening stores for a dry run without changing a byte on disk.

Every backend's read-only mode writes nothing to its data, but LMDB, even read-only, records
each reader in the reader table of ``lock.mdb`` (and re-initialises that file when it is the
only user). That table protects readers from writers in other processes; when no other
process has the environment open, there is no one to protect against, so a dry run opens it
with ``lock=False`` and ``lock.mdb`` stays byte-identical. The probe is LMDB's own: every
process using the environment holds a shared POSIX lock on the first byte of ``lock.mdb``;
if an exclusive lock on that byte can be had, nobody else has it open. When someone does,
the normal (locking) read-only open is used and only the reader table changes.

SQLite in WAL mode creates ``-wal`` and ``-shm`` files for any reader, read-only ones
included, and a read-only connection cannot remove them. When neither file exists, no
connection has the database open and its WAL is checkpointed, so a dry run opens it with
``immutable=1`` (no lock, no side files); otherwise the normal read-only open is used.
LevelDB read-only opens go through a private snapshot of the directory (the backend does
that itself), and flatfs read-only opens write nothing.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Any

from dsbackup.datastores import open_datastore, parse_uri
from dsbackup.errors import DatastoreError

__all__ = ["open_readonly"]

log = logging.getLogger(__name__)


def _lmdb_unused(path: Path) -> bool:
    lock = path / "lock.mdb"
    if not (path / "data.mdb").is_file():
        return False
    try:
        fd = os.open(lock, os.O_RDWR)  # an exclusive POSIX lock needs write access
    except FileNotFoundError:
        return True  # no lock file: nobody has it open (and we will not create one)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0, os.SEEK_SET)
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the probe lock
    return True


def _open_lmdb_lock_free(path: Path) -> Any:
    import lmdb as _lmdb

    from dsbackup.datastores import lmdb as lmdb_backend

    cls = lmdb_backend.LmdbDatastore

    class _LockFreeLmdb(cls):  # type: ignore[misc, valid-type]
        def _open_env(self, readonly: bool, map_size: int | None, sync: bool) -> Any:
            if not (self.path / "data.mdb").is_file():
                raise DatastoreError(f"{self.path}: no LMDB environment (data.mdb missing)")
            return _lmdb.open(str(self.path), subdir=True, readonly=True, create=False,
                              lock=False, max_dbs=0, map_size=max(
                                  lmdb_backend.INITIAL_MAP_SIZE,
                                  (self.path / "data.mdb").stat().st_size))

    return _LockFreeLmdb(path, readonly=True)


def _sqlite_unused(path: Path) -> bool:
    return path.is_file() and not any(
        path.with_name(path.name + sfx).exists() for sfx in ("-wal", "-shm", "-journal"))


def _open_sqlite_immutable(path: Path) -> Any:
    import sqlite3
    import urllib.parse

    from dsbackup.datastores import sqlite as sqlite_backend

    cls = sqlite_backend.SqliteDatastore

    class _ImmutableSqlite(cls):  # type: ignore[misc, valid-type]
        def _connect(self) -> sqlite3.Connection:
            uri = "file:" + urllib.parse.quote(str(self.path)) + "?mode=ro&immutable=1"
            return sqlite3.connect(uri, uri=True, isolation_level=None,
                                   check_same_thread=False, timeout=self._timeout)

    return _ImmutableSqlite(path, readonly=True)


def open_readonly(uri: str) -> Any:
    """Open ``uri`` read-only, leaving every file as it was where the backend allows."""
    scheme, path, _params = parse_uri(uri)
    if scheme == "sqlite" and path and _sqlite_unused(Path(path)):
        from dsbackup.datastores import sqlite as sqlite_backend

        if hasattr(sqlite_backend.SqliteDatastore, "_connect"):
            log.debug("dry run: opening %s immutable (no WAL, nobody has it open)", path)
            return _open_sqlite_immutable(Path(path))
    if scheme == "lmdb" and path:
        p = Path(path)
        from dsbackup.datastores import lmdb as lmdb_backend

        if (_lmdb_unused(p) and hasattr(lmdb_backend.LmdbDatastore, "_open_env")
                and not lmdb_backend.is_open(p)):
            log.debug("dry run: opening %s without LMDB's reader lock", p)
            return _open_lmdb_lock_free(p)
    return open_datastore(uri, readonly=True)
