"""LMDB datastore via py-lmdb: the embedded default.

One unnamed database; keys are the key bytes, values raw. The map grows on demand (doubling
on ``MDB_MAP_FULL``); ``readonly=True`` opens with ``MDB_RDONLY`` and never writes. A batch
and ``put_many`` are one write transaction; ``put_many`` uses append mode when its keys are
sorted and all greater than the last stored key (always true for a sorted restore into an
empty database).

One environment per process: LMDB's POSIX locks belong to the process, and py-lmdb and the
native scanner (``dsbackup._ext.lmdbscan``) link separate copies of liblmdb, so opening the
same environment twice in one process — even through different libraries — can break the
lock table or lose a reader slot. This module keeps a process-global registry of open
environments: a second open of the same path raises :class:`DatastoreError`;
:func:`is_open` lets other code check before opening the path with its own liblmdb. An
environment opened before ``fork`` is unusable in the child (any use raises) and does not
count as open there; if no scan of it was running at the fork, the child's copy is closed
so the child may open the path afresh (better: use spawn or forkserver workers).
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import lmdb as _lmdb

from dsbackup.datastores import lmdbclaims
from dsbackup.datastores.base import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_RECORDS,
    BaseDatastore,
    unbatch,
)
from dsbackup.datastores.lmdblockfile import reserve_lock_file
from dsbackup.errors import DatastoreError, InvalidKey, LockedError, NotFound

__all__ = ["LmdbDatastore", "claim", "is_open", "open_lmdb", "INITIAL_MAP_SIZE"]

INITIAL_MAP_SIZE = 64 << 20
_MAX_GROWTHS = 40

# the registry of open environments, shared with the native LMDB code (lmdbclaims.py)
_registry_lock = lmdbclaims.registry_lock
_open_envs = lmdbclaims.open_envs
_claims = lmdbclaims.claims
_env_id = lmdbclaims.env_id
is_open = lmdbclaims.is_open
claim = lmdbclaims.claim


def _after_fork_in_child() -> None:
    with _registry_lock:
        for ref in _open_envs.values():
            ds = ref()
            if ds is not None:
                ds._forked = True
                ds._finalizer.detach()  # the parent owns the environment
                if not ds._readers:
                    # No transaction of ours is live, so closing only unmaps and closes
                    # this process's descriptors (POSIX locks and reader slots belong to
                    # the parent's pid and are untouched), letting the child reopen.
                    with contextlib.suppress(Exception):
                        ds._env.close()
        _open_envs.clear()
        _claims.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _full_disk_error(path: Path, exc: Exception,
                     ops: list[tuple[bytes, bytes | None]]) -> DatastoreError | None:
    """LMDB reports a write the disk had no room for as ENOSPC, or as EIO when the write came
    up short: a DatastoreError naming the full filesystem when that is what happened (the
    transaction was aborted: nothing of it was written), else None."""
    from dsbackup.diskspace import free_bytes, no_space_message

    text = str(exc)
    if "No space left" not in text and "Input/output error" not in text:
        return None
    needed = 2 * sum(len(k) + len(v or b"") for k, v in ops) + (1 << 20)
    free = free_bytes(path)
    if "No space left" not in text and (free is None or free >= needed):
        return None  # a real I/O error, not a full disk
    return DatastoreError(no_space_message(path, needed, free))


class LmdbDatastore(BaseDatastore):
    """An LMDB environment directory (``data.mdb`` + ``lock.mdb``)."""

    scheme = "lmdb"
    atomic_put_many = True  # one transaction (write batch) a call
    parallel_readable = True

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False,
                 map_size: int | None = None, sync: bool = True) -> None:
        self.path = Path(path).absolute()
        super().__init__(f"lmdb:{self.path}", readonly=readonly,
                         location=str(self.path))
        self._forked = False
        self._readers = 0
        self._wlock = threading.Lock()
        env_id = _env_id(self.path)
        with _registry_lock:
            ref = _open_envs.get(env_id)
            if env_id in _claims:
                raise DatastoreError(
                    f"LMDB environment {self.path} is already open in this process (by "
                    f"{_claims[env_id]}); LMDB environments may be opened once per process")
            if ref is not None and ref() is not None:
                raise DatastoreError(
                    f"LMDB environment {self.path} is already open in this process; open it "
                    "once and share the object (LMDB locks are per process)")
            self._env = self._open_env(readonly, map_size, sync)
            _open_envs[env_id] = weakref.ref(self)
        self._env_id = env_id
        self._finalizer = weakref.finalize(self, _close_env, self._env, env_id)

    def _open_env(self, readonly: bool, map_size: int | None, sync: bool) -> _lmdb.Environment:
        data = self.path / "data.mdb"
        if readonly and not data.is_file():
            raise DatastoreError(f"{self.path}: no LMDB environment (data.mdb missing)")
        if not readonly:
            if self.path.exists() and not self.path.is_dir():  # mkdir would say "File exists"
                raise DatastoreError(f"{self.path}: not a directory (LMDB is a directory)")
            self.path.mkdir(parents=True, exist_ok=True)
            reserve_lock_file(self.path)  # a full disk: a message, not SIGBUS
        if map_size is None:
            used = data.stat().st_size if data.is_file() else 0
            map_size = max(INITIAL_MAP_SIZE, 2 * used)
        kwargs = dict(map_size=map_size, subdir=True, readonly=readonly, create=not readonly,
                      max_dbs=0, sync=sync, metasync=sync, meminit=False, lock=True)
        try:
            return _lmdb.open(str(self.path), **kwargs)
        except _lmdb.LockError as e:
            raise LockedError(f"{self.path}: LMDB lock file busy: {e}") from e
        except _lmdb.Error as e:
            if readonly and "Read-only file system" in str(e):
                # A read-only medium: no writer can exist, so lock-free reading is safe.
                kwargs["lock"] = False
                try:
                    return _lmdb.open(str(self.path), **kwargs)
                except _lmdb.Error as e2:
                    raise DatastoreError(f"{self.path}: cannot open LMDB: {e2}") from e2
            hint = ("" if "Permission denied" not in str(e)
                    else " (readers need write access to lock.mdb to register in the reader "
                    "table)" if readonly else " (a writer needs write access to the store's "
                    "directory, data.mdb and lock.mdb)")
            raise DatastoreError(f"{self.path}: cannot open LMDB: {e}{hint}") from e

    # -- transactions --------------------------------------------------------------------
    def _live(self) -> _lmdb.Environment:
        if self._forked:
            raise DatastoreError(
                f"LMDB environment {self.path} was opened before fork; reopen it in the child")
        self._check_open()
        return self._env

    def _begin_read(self, buffers: bool = False) -> _lmdb.Transaction:
        env = self._live()
        try:
            return env.begin(buffers=buffers)
        except _lmdb.MapResizedError:
            env.set_mapsize(0)  # another process grew the map: adopt its size
            return env.begin(buffers=buffers)

    def _write(self, ops: list[tuple[bytes, bytes | None]], *, append: bool = False) -> None:
        """Apply ``ops`` in one write transaction, growing the map and retrying on
        ``MDB_MAP_FULL``."""
        env = self._live()
        with self._wlock:
            for _ in range(_MAX_GROWTHS):
                try:
                    with env.begin(write=True) as txn:
                        if append:
                            cur = txn.cursor()
                            cur.putmulti(ops, dupdata=False, overwrite=True, append=True)
                        else:
                            put, delete = txn.put, txn.delete
                            for k, v in ops:
                                if v is None:
                                    delete(k)
                                else:
                                    put(k, v)
                    return
                except _lmdb.MapFullError:
                    self._grow()
                except _lmdb.MapResizedError:
                    env.set_mapsize(0)
                except _lmdb.BadValsizeError as e:
                    bad = next((k for k, _ in ops if len(k) > env.max_key_size() or not k), b"")
                    raise InvalidKey(
                        f"key {bad[:80]!r} is empty or longer than LMDB's "
                        f"{env.max_key_size()}-byte limit ({self.path})") from e
                except _lmdb.Error as e:
                    full = _full_disk_error(self.path, e, ops)
                    if full is not None:
                        raise full from None
                    raise DatastoreError(f"{self.path}: LMDB write failed: {e}") from e
            raise DatastoreError(f"{self.path}: LMDB map could not grow enough")

    def _grow(self) -> None:
        if self._readers:
            raise DatastoreError(
                f"{self.path}: LMDB map is full and cannot grow while a scan of this "
                "datastore is open in this process; finish or close the scan first")
        size = self._env.info()["map_size"]
        self._env.set_mapsize(size * 2)

    # -- primitives ----------------------------------------------------------------------
    def _validate_key(self, key: bytes) -> None:
        if len(key) > self._env.max_key_size():
            raise InvalidKey(f"key {key[:80]!r}... is longer than LMDB's "
                             f"{self._env.max_key_size()}-byte limit ({self.path})")

    def _get(self, key: bytes) -> bytes:
        with self._begin_read() as txn:
            v = txn.get(key)
        if v is None:
            raise NotFound(f"key {key!r} not found in {self.uri}")
        return v

    def _get_size(self, key: bytes) -> int:
        with self._begin_read(buffers=True) as txn:
            v = txn.get(key)
            if v is None:
                raise NotFound(f"key {key!r} not found in {self.uri}")
            return len(v)

    def _put(self, key: bytes, value: bytes) -> None:
        self._write([(key, value)])

    def _delete(self, key: bytes) -> None:
        self._write([(key, None)])

    def _apply_batch(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        self._write(ops)

    def _iter_items(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        return unbatch(self.scan_batches(start, end, max_records=1024))

    def _iter_sizes(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, int]]:
        return unbatch(self.scan_key_sizes(start, end, max_records=1024))

    # -- fast paths ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _scan_cursor(self, start: bytes, *, buffers: bool = False
                     ) -> Iterator[_lmdb.Cursor | None]:
        """A cursor at the first key ``>= start`` (None: there is none) in a read transaction
        that counts as an open scan (the map cannot grow under it: _grow) until the block
        ends."""
        txn = self._begin_read(buffers=buffers)
        self._readers += 1
        try:
            cur = txn.cursor()
            yield cur if cur.set_range(start) else None
        finally:
            self._readers -= 1
            txn.abort()

    def scan_batches(self, start: bytes = b"", end: bytes | None = None, *,
                     max_records: int = DEFAULT_MAX_RECORDS,
                     max_bytes: int = DEFAULT_MAX_BYTES
                     ) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """Batches from one read transaction: the whole scan is one consistent snapshot."""
        with self._scan_cursor(start) as cur:
            if cur is None:
                return
            keys: list[bytes] = []
            vals: list[bytes] = []
            size = 0
            for k, v in cur.iternext():
                if end is not None and k >= end:
                    break
                keys.append(k)
                vals.append(v)
                size += len(v)
                if len(keys) >= max_records or size >= max_bytes:
                    yield keys, vals
                    keys = []
                    vals = []
                    size = 0
            if keys:
                yield keys, vals

    def scan_key_sizes(self, start: bytes = b"", end: bytes | None = None, *,
                       max_records: int = DEFAULT_MAX_RECORDS
                       ) -> Iterator[tuple[list[bytes], list[int]]]:
        with self._scan_cursor(start, buffers=True) as cur:
            if cur is None:
                return
            keys: list[bytes] = []
            sizes: list[int] = []
            for k, v in cur.iternext():
                kb = bytes(k)
                if end is not None and kb >= end:
                    break
                keys.append(kb)
                sizes.append(len(v))
                if len(keys) >= max_records:
                    yield keys, sizes
                    keys = []
                    sizes = []
            if keys:
                yield keys, sizes

    def put_many(self, keys: list[bytes], values: list[bytes]) -> None:
        """One write transaction; append mode when keys are sorted past the last key."""
        self._check_put_many(keys, values)
        if not keys:
            return
        limit = self._env.max_key_size()
        if max(map(len, keys)) > limit or not min(map(len, keys)):
            self._validate_key(max(keys, key=len))
            raise InvalidKey(f"empty key in put_many ({self.path})")
        ascending = all(map(bytes.__lt__, keys, keys[1:]))
        last = self.last_key() if ascending else None
        append = ascending and (last is None or keys[0] > last)
        self._write(list(zip(keys, values)), append=append)

    def approx_count(self) -> int:
        return int(self._live().stat()["entries"])

    def approx_size(self) -> int:
        st = self._live().stat()
        return int((st["leaf_pages"] + st["overflow_pages"]) * st["psize"])

    def disk_usage(self) -> int:
        return sum(p.stat().st_size for p in (self.path / "data.mdb", self.path / "lock.mdb")
                   if p.exists())

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[int]:
        """Hold LMDB's writer lock (an empty write transaction) and yield the last committed
        transaction id: read transactions begun by other processes meanwhile all see that
        same snapshot. Needs a writable open."""
        self._check_writable()
        env = self._live()
        with self._wlock:
            txn = env.begin(write=True)
            try:
                yield int(env.info()["last_txnid"])
            finally:
                txn.abort()

    def last_txn_id(self) -> int:
        """The id of the last committed write transaction (snapshot identity)."""
        return int(self._live().info()["last_txnid"])

    def seek_key(self, key: bytes) -> bytes | None:
        with self._begin_read() as txn:
            cur = txn.cursor()
            return cur.key() if cur.set_range(key) else None

    def last_key(self) -> bytes | None:
        with self._begin_read() as txn:
            cur = txn.cursor()
            return cur.key() if cur.last() else None

    def is_empty(self) -> bool:
        return self.approx_count() == 0

    def sync(self, prefix: object = "/") -> None:
        env = self._live()
        if not self.readonly:
            env.sync(True)

    def check(self) -> None:
        """Open a read transaction and walk the first and last keys."""
        try:
            self.first_key()
            self.last_key()
            self._live().stat()
        except _lmdb.Error as e:
            raise DatastoreError(f"{self.path}: LMDB check failed: {e}") from e

    def scrub(self) -> None:
        """Read every record once (detects corrupted pages)."""
        last = b""
        try:
            for keys, _ in self.scan_key_sizes(max_records=65536):
                last = keys[-1]
        except _lmdb.Error as e:
            raise DatastoreError(f"{self.path}: LMDB scrub failed after key {last!r}: {e}") \
                from e

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._forked:
            return  # the parent owns the environment; closing here would drop its locks
        self._finalizer()


def _close_env(env: _lmdb.Environment, env_id: str) -> None:
    with _registry_lock:
        ref = _open_envs.get(env_id)
        if ref is not None and (ref() is None or ref()._env is env):
            del _open_envs[env_id]
    env.close()


def open_lmdb(path: str, *, readonly: bool = False, map_size: int | str | None = None,
              sync: bool | str = True) -> LmdbDatastore:
    if not path:
        raise DatastoreError("lmdb: needs a directory path")
    from dsbackup.datastores.registry import _bool_param, _int_param

    return LmdbDatastore(path, readonly=readonly,
                         map_size=(_int_param(map_size, "map_size", 0, 2**63 - 1)
                                   if map_size is not None else None),
                         sync=_bool_param(sync, "sync"))
