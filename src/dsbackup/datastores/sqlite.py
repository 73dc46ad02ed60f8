"""SQLite datastore via the standard library: one table, WAL journal, ordered scans.

Schema: ``CREATE TABLE datastore (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT
ROWID``. BLOB keys compare with ``memcmp``, so ``ORDER BY key`` is the bytewise key order.
Several processes may read at once (WAL); each scan is one statement, hence one snapshot,
and after ``pin_snapshot()`` every scan reads the one snapshot pinned (a backup's planning walk,
its value reads and its parallel workers, see dsbackup.pipeline).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from dsbackup.datastores.base import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_RECORDS,
    BaseDatastore,
    batch_items,
)
from dsbackup.errors import DatastoreError, LockedError, NotFound

__all__ = ["SqliteDatastore", "open_sqlite", "TABLE"]

TABLE = "datastore"
_SQLITE_FULL = 13  # "database or disk is full"
_SCHEMA = f"CREATE TABLE IF NOT EXISTS {TABLE} (key BLOB PRIMARY KEY, value BLOB NOT NULL) " \
          "WITHOUT ROWID"


class SqliteDatastore(BaseDatastore):
    scheme = "sqlite"
    atomic_put_many = True  # one transaction (write batch) a call
    parallel_readable = True

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False,
                 sync: bool = True, timeout: float = 30.0) -> None:
        self.path = Path(path).absolute()
        super().__init__(f"sqlite:{self.path}", readonly=readonly,
                         location=str(self.path))
        self._timeout = timeout
        self._lock = threading.RLock()
        self._pinned: sqlite3.Connection | None = None  # see pin_snapshot
        if self.path.is_dir():  # (SQLite says only "unable to open database file")
            raise DatastoreError(f"{self.path}: a directory, not an SQLite database file")
        if readonly and not self.path.is_file():
            raise DatastoreError(f"{self.path}: no SQLite database")
        new = not readonly and not os.path.lexists(self.path)
        self._immutable = False  # see _open_on_read_only_fs
        try:
            self._conn = self._connect()
            if not readonly:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute(f"PRAGMA synchronous={'FULL' if sync else 'OFF'}")
                self._conn.execute(_SCHEMA)
            self._conn.execute(f"SELECT 1 FROM {TABLE} LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:
            if new:  # a database this open made and could not set up: not left behind
                self._discard_new()
            if getattr(e, "sqlite_errorcode", None) == _SQLITE_FULL:  # (creating it)
                from dsbackup.diskspace import no_space_message

                raise DatastoreError(no_space_message(self.path)) from None
            if not isinstance(e, sqlite3.OperationalError):
                raise DatastoreError(f"{self.path}: cannot open SQLite database: {e}") from e
            if "locked" in str(e) or "busy" in str(e):
                raise LockedError(f"{self.path}: SQLite database is locked: {e}") from e
            if not (readonly and _on_read_only_fs(self.path)):
                raise DatastoreError(f"{self.path}: not a dsbackup SQLite datastore: {e}") \
                    from e
            self._open_on_read_only_fs()

    def _open_on_read_only_fs(self) -> None:
        """A WAL database on a read-only filesystem (a snapshot mounted read-only) without its
        ``-shm`` file: SQLite cannot make one, and refused ``mode=ro`` ("unable to open
        database file", said as "not a dsbackup SQLite datastore"). Without a ``-wal`` file
        either, every committed row is in the database file, which nothing can change:
        opened ``immutable=1`` (no locks, no shared memory). With one, refused: an immutable
        open would not read the WAL, and its rows would be missing from the backup."""
        wal = Path(f"{self.path}-wal")
        try:
            wal_size = wal.stat().st_size
        except FileNotFoundError:
            wal_size = 0
        if wal_size:
            raise DatastoreError(
                f"{self.path}: on a read-only filesystem with its WAL ({wal.name}, "
                f"{wal_size} bytes) but no {self.path.name}-shm, which SQLite needs to read "
                "the WAL: copy the database with its -wal file to a writable place and back "
                "up that copy") from None
        self._immutable = True
        try:
            self._conn = self._connect()
            self._conn.execute(f"SELECT 1 FROM {TABLE} LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:
            raise DatastoreError(f"{self.path}: not a dsbackup SQLite datastore: {e}") from e

    def _discard_new(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(OSError):
                os.unlink(f"{self.path}{suffix}")

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            uri = "file:" + urllib.parse.quote(str(self.path)) + "?mode=ro"
            if self._immutable:
                uri += "&immutable=1"
            return sqlite3.connect(uri, uri=True, isolation_level=None,
                                   check_same_thread=False, timeout=self._timeout)
        return sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                               timeout=self._timeout)

    def _one(self, sql: str, args: tuple = ()) -> tuple | None:
        self._check_open()
        with self._lock:
            return self._conn.execute(sql, args).fetchone()

    def _get(self, key: bytes) -> bytes:
        row = self._one(f"SELECT value FROM {TABLE} WHERE key = ?", (key,))
        if row is None:
            raise NotFound(f"key {key!r} not found in {self.uri}")
        return bytes(row[0])

    def _get_size(self, key: bytes) -> int:
        row = self._one(f"SELECT length(value) FROM {TABLE} WHERE key = ?", (key,))
        if row is None:
            raise NotFound(f"key {key!r} not found in {self.uri}")
        return int(row[0])

    def _put(self, key: bytes, value: bytes) -> None:
        with self._lock:
            self._conn.execute(f"INSERT OR REPLACE INTO {TABLE} (key, value) VALUES (?, ?)",
                               (key, value))

    def _delete(self, key: bytes) -> None:
        with self._lock:
            self._conn.execute(f"DELETE FROM {TABLE} WHERE key = ?", (key,))

    def _apply_batch(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                for k, v in ops:
                    if v is None:
                        c.execute(f"DELETE FROM {TABLE} WHERE key = ?", (k,))
                    else:
                        c.execute(f"INSERT OR REPLACE INTO {TABLE} (key, value) VALUES (?, ?)",
                                  (k, v))
            except BaseException as exc:
                self._abort(exc)
                raise
            self._commit()

    def _abort(self, exc: BaseException) -> None:
        """Roll back a failed write transaction (SQLite already did on SQLITE_FULL) and turn
        a full disk into a DatastoreError naming it."""
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == \
                _SQLITE_FULL:
            from dsbackup.diskspace import no_space_message

            raise DatastoreError(no_space_message(self.path)) from None
        if isinstance(exc, sqlite3.Error):
            raise DatastoreError(f"{self.path}: SQLite write failed: {exc}") from None

    def _commit(self) -> None:
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._abort(exc)
            raise

    def put_many(self, keys: list[bytes], values: list[bytes]) -> None:
        """One transaction with ``executemany``."""
        self._check_writable()
        if len(keys) != len(values):
            raise ValueError("put_many: keys and values differ in length")
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                c.executemany(f"INSERT OR REPLACE INTO {TABLE} (key, value) VALUES (?, ?)",
                              zip(keys, values))
            except BaseException as exc:
                self._abort(exc)
                raise
            self._commit()

    def pin_snapshot(self) -> None:
        """Read every later scan in one read transaction begun now (again: a new one), on a
        connection of its own held until unpin_snapshot() or close(): the planning walk and
        the value reads of one backup then see one state of the store, not each its own
        while an application writes it."""
        self.unpin_snapshot()
        self._check_open()
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            # (a read transaction takes its snapshot at its first read)
            conn.execute(f"SELECT 1 FROM {TABLE} LIMIT 1").fetchall()
        except sqlite3.Error as e:
            conn.close()
            raise DatastoreError(f"{self.path}: cannot begin an SQLite read: {e}") from e
        self._pinned = conn

    def unpin_snapshot(self) -> None:
        conn, self._pinned = self._pinned, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version`` of this object's own connection: it changes
        exactly when another connection commits (so two equal reads prove no commit came
        between them)."""
        row = self._one("PRAGMA data_version")
        return int(row[0]) if row else 0

    def _select(self, cols: str, start: bytes, end: bytes | None, batch: int
                ) -> Iterator[list[tuple]]:
        """Rows in key order from a dedicated connection (one statement: one snapshot), or
        from the pinned snapshot's."""
        self._check_open()
        pinned = self._pinned
        conn = pinned if pinned is not None else self._connect()
        try:
            if end is None:
                cur = conn.execute(f"SELECT {cols} FROM {TABLE} WHERE key >= ? ORDER BY key",
                                   (start,))
            else:
                cur = conn.execute(f"SELECT {cols} FROM {TABLE} WHERE key >= ? AND key < ? "
                                   "ORDER BY key", (start, end))
            while True:
                rows = cur.fetchmany(batch)
                if not rows:
                    return
                yield rows
        finally:
            if conn is not pinned:
                conn.close()

    def _iter_items(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        for rows in self._select("key, value", start, end, 1024):
            yield from rows

    def _iter_sizes(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, int]]:
        for rows in self._select("key, length(value)", start, end, 1024):
            yield from rows

    def scan_batches(self, start: bytes = b"", end: bytes | None = None, *,
                     max_records: int = DEFAULT_MAX_RECORDS,
                     max_bytes: int = DEFAULT_MAX_BYTES
                     ) -> Iterator[tuple[list[bytes], list[bytes]]]:
        rows = self._select("key, value", start, end, min(max_records, 1024))
        yield from batch_items(itertools.chain.from_iterable(rows), max_records, max_bytes)

    def scan_key_sizes(self, start: bytes = b"", end: bytes | None = None, *,
                       max_records: int = DEFAULT_MAX_RECORDS
                       ) -> Iterator[tuple[list[bytes], list[int]]]:
        for rows in self._select("key, length(value)", start, end, max_records):
            keys, sizes = zip(*rows)
            yield list(keys), list(sizes)

    def approx_count(self) -> None:
        return None

    def approx_size(self) -> int:
        return self.disk_usage()

    def disk_usage(self) -> int:
        pc = self._one("PRAGMA page_count")
        ps = self._one("PRAGMA page_size")
        return int(pc[0]) * int(ps[0]) if pc and ps else 0

    def seek_key(self, key: bytes) -> bytes | None:
        row = self._one(f"SELECT key FROM {TABLE} WHERE key >= ? ORDER BY key LIMIT 1", (key,))
        return None if row is None else bytes(row[0])

    def last_key(self) -> bytes | None:
        row = self._one(f"SELECT key FROM {TABLE} ORDER BY key DESC LIMIT 1")
        return None if row is None else bytes(row[0])

    def sync(self, prefix: object = "/") -> None:
        self._check_open()
        if not self.readonly:
            with self._lock:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def check(self) -> None:
        row = self._one("PRAGMA quick_check")
        if row is None or row[0] != "ok":
            raise DatastoreError(f"{self.path}: SQLite quick_check failed: {row}")

    def scrub(self) -> None:
        rows = []
        with self._lock:
            rows = self._conn.execute("PRAGMA integrity_check").fetchall()
        if rows != [("ok",)]:
            raise DatastoreError(f"{self.path}: SQLite integrity_check failed: {rows[:5]}")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.unpin_snapshot()
            self._conn.close()


def _on_read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def open_sqlite(path: str, *, readonly: bool = False, sync: bool | str = True
                ) -> SqliteDatastore:
    from dsbackup.datastores.registry import _bool_param

    return SqliteDatastore(path, readonly=readonly, sync=_bool_param(sync, "sync"))
