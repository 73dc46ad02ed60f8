"""LevelDB datastore via plyvel (Kubo's metadata store, ``levelds``).

Keys are the key bytes, values raw, in LevelDB's default bytewise order. LevelDB takes an
exclusive lock on its directory, so only one process can have it open:
``parallel_readable`` is False. Opening always lets LevelDB recover its write-ahead log,
which rewrites files in the directory, so ``readonly=True`` opens a private snapshot of the
directory instead (see :mod:`dsbackup.datastores.leveldb_snapshot`): a read-only open
(backups, dry runs, migration sources) never changes a byte, mode or mtime of the original.

``compression`` is how new table files are written: ``"snappy"`` (LevelDB's default, for
``leveldb:``) or ``None``. Kubo's ``levelds`` (its default config says ``"compression":
"none"``) and Helia's datastore-level (``compression: false``) write uncompressed tables;
the ``kubo:`` and ``helia:`` mounts pass what their writer uses. Tables of either kind are
read whatever this says.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from dsbackup._forkfds import closed_in_child
from dsbackup.datastores.base import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_RECORDS,
    BaseDatastore,
    batch_items,
)
from dsbackup.datastores.leveldb_snapshot import remove_snapshot, take_snapshot
from dsbackup.errors import ConfigError, DatastoreError, DsBackupError, LockedError, NotFound

__all__ = ["LevelDbDatastore", "open_leveldb"]


def _open_error(path: Path, e: Exception) -> DsBackupError:
    import plyvel

    text = _text(e)
    # LevelDB's lock failure: "lock PATH/LOCK: Resource temporarily unavailable" (another
    # process) or "... already held by process" (this one); "PATH/LOCK: Not a directory" (a
    # file where the store's directory belongs) is no lock held by anyone
    if isinstance(e, plyvel.IOError) and ("temporarily unavailable" in text
                                          or "already held" in text):
        return LockedError(f"{path}: LevelDB is locked by another process "
                           f"(is the Kubo daemon running?): {text}")
    if "No space left on device" in text:  # creating it, or replaying its log
        return _write_error(path, e)
    if os.path.exists(path) and not os.path.isdir(path):
        return DatastoreError(f"{path}: not a directory (LevelDB is a directory)")
    return DatastoreError(f"{path}: cannot open LevelDB: {text}")


def _text(e: Exception) -> str:
    """plyvel's message (it gives LevelDB's status as bytes)."""
    text = e.args[0] if e.args else e
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


def _write_error(path: Path, e: Exception) -> DsBackupError:
    """A failed write: a full disk is `no space left on MOUNT` (docs/CLI.md), anything else
    LevelDB's text (plyvel gives it as bytes) naming the store."""
    text = _text(e)
    if "No space left on device" in text:
        from dsbackup.diskspace import no_space_message

        return DatastoreError(no_space_message(path))
    return DatastoreError(f"{path}: LevelDB write failed: {text}")


# goleveldb locks held by this process: a forked child closes its copies at once
_flocks = closed_in_child()


def _lock_against_goleveldb(path: Path) -> int | None:
    """An exclusive ``flock`` on ``path/LOCK`` held while the store is open writable, or None
    when there is no LOCK yet (no LevelDB there). LevelDB's C++ library (plyvel) locks LOCK
    with a POSIX lock, goleveldb (Kubo's ``levelds``) with ``flock``; the two kinds do not see
    each other on Linux, so a restore into a LevelDB a Kubo daemon had open wrote beside it.
    Taken before LevelDB's own lock and dropped after it: the descriptor is closed only once
    LevelDB has closed (a close drops the process's POSIX locks on the file)."""
    try:
        fd = os.open(path / "LOCK", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise DatastoreError(f"{path}: cannot read LevelDB's LOCK file: {exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            raise LockedError(f"{path}: LevelDB is locked by another process (is the Kubo "
                              "daemon running?)") from None
        raise DatastoreError(f"{path}: cannot lock LevelDB's LOCK file: {exc}") from None
    _flocks.add(fd)
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        _flocks.discard(fd)
        os.close(fd)


class LevelDbDatastore(BaseDatastore):
    scheme = "leveldb"
    parallel_readable = False

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False,
                 sync: bool = False, compression: str | None = "snappy") -> None:
        import plyvel

        if compression not in ("snappy", None):
            raise ConfigError(f"leveldb: compression={compression!r}: expected 'snappy' "
                              "or 'none'")

        self.path = Path(path).absolute()
        super().__init__(f"leveldb:{self.path}", readonly=readonly,
                         location=str(self.path))
        self.sync_writes = sync
        self._plyvel_error = plyvel.Error
        # read-only: open a private snapshot, so LevelDB's log recovery writes only there;
        # writable: goleveldb's lock (flock) taken first, which LevelDB's own (POSIX) misses
        self._snapshot: Path | None = take_snapshot(self.path) if readonly else None
        self._flock: int | None = None if readonly else _lock_against_goleveldb(self.path)
        try:
            self._db = plyvel.DB(str(self._snapshot or self.path),
                                 create_if_missing=not readonly,
                                 # read-only: tables LevelDB writes when it recovers the log
                                 # go to the private snapshot only; keep LevelDB's default
                                 compression="snappy" if readonly else compression)
        except BaseException as e:
            if self._snapshot is not None:
                remove_snapshot(self._snapshot)
            _unlock(self._flock)
            if isinstance(e, plyvel.Error):
                raise _open_error(self.path, e) from e
            raise

    def _get(self, key: bytes) -> bytes:
        self._check_open()
        v = self._db.get(key)
        if v is None:
            raise NotFound(f"key {key!r} not found in {self.uri}")
        return v

    def _put(self, key: bytes, value: bytes) -> None:
        try:
            self._db.put(key, value, sync=self.sync_writes)
        except self._plyvel_error as e:
            raise _write_error(self.path, e) from e

    def _delete(self, key: bytes) -> None:
        try:
            self._db.delete(key, sync=self.sync_writes)
        except self._plyvel_error as e:
            raise _write_error(self.path, e) from e

    def _apply_batch(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        try:
            with self._db.write_batch(sync=self.sync_writes) as wb:
                for k, v in ops:
                    if v is None:
                        wb.delete(k)
                    else:
                        wb.put(k, v)
        except self._plyvel_error as e:
            raise _write_error(self.path, e) from e

    def _iterator(self, start: bytes, end: bytes | None, **kw: object) -> Iterator:
        self._check_open()
        snap = self._db.snapshot()
        return snap.iterator(start=start or None, stop=end, **kw)

    def _iter_items(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        it = self._iterator(start, end)
        try:
            yield from it
        finally:
            it.close()

    def scan_batches(self, start: bytes = b"", end: bytes | None = None, *,
                     max_records: int = DEFAULT_MAX_RECORDS,
                     max_bytes: int = DEFAULT_MAX_BYTES
                     ) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """Batches from one LevelDB snapshot."""
        it = self._iterator(start, end)
        try:
            yield from batch_items(it, max_records, max_bytes)
        finally:
            it.close()

    def put_many(self, keys: list[bytes], values: list[bytes]) -> None:
        self._check_put_many(keys, values)
        try:
            with self._db.write_batch(sync=self.sync_writes) as wb:
                for k, v in zip(keys, values):
                    wb.put(k, v)
        except self._plyvel_error as e:
            raise _write_error(self.path, e) from e

    def approx_count(self) -> None:
        return None

    def approx_size(self) -> int:
        """LevelDB's estimate of the bytes in its table files (0 while all data is still
        in the log)."""
        self._check_open()
        return int(self._db.approximate_size(b"", b"\xff" * 16))

    def disk_usage(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())

    def seek_key(self, key: bytes) -> bytes | None:
        it = self._iterator(key, None, include_value=False)
        try:
            return next(it, None)
        finally:
            it.close()

    def last_key(self) -> bytes | None:
        it = self._iterator(b"", None, include_value=False, reverse=True)
        try:
            return next(it, None)
        finally:
            it.close()

    def sync(self, prefix: object = "/") -> None:
        """LevelDB has no flush call; a synced empty batch forces the log to disk."""
        self._check_open()
        if not self.readonly:
            try:
                with self._db.write_batch(sync=True):
                    pass
            except self._plyvel_error as e:
                raise _write_error(self.path, e) from e

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._db.close()
            finally:
                _unlock(self._flock)  # after LevelDB let go of its own lock
                self._flock = None
                if self._snapshot is not None:
                    remove_snapshot(self._snapshot)


def open_leveldb(path: str, *, readonly: bool = False, sync: bool | str = False,
                 compression: str | None = "snappy") -> LevelDbDatastore:
    from dsbackup.datastores.registry import _bool_param

    return LevelDbDatastore(path, readonly=readonly, sync=_bool_param(sync, "sync"),
                            compression=None if compression == "none" else compression)
