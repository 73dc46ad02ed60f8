"""The ``Datastore`` protocol, optional capabilities, batches, and a base class.

The protocol mirrors go-datastore (``get``, ``has``, ``get_size``, ``put``, ``delete``,
``query``, ``sync``, ``close``, ``batch``) and adds the fast paths the backup pipeline uses
(``scan_batches``, ``scan_key_sizes``, ``put_many``, ``first_key`` ...). Keys passed to the
go-style methods may be a :class:`~dsbackup.keys.Key`, a ``str`` (cleaned like ``NewKey``)
or ``bytes`` (raw stored key bytes, not cleaned). The fast paths take and return raw key
bytes only.

Ordering: every scan yields keys in strictly increasing bytewise order. go-datastore orders
query results by Go string comparison, which is the same bytewise order.

Backends subclass :class:`BaseDatastore` and implement the primitives ``_get``, ``_put``,
``_delete``, ``_iter_items`` and ``_iter_sizes``; everything else has a default built on
them, which backends override where they can do better.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeVar, runtime_checkable

from dsbackup.errors import DatastoreError, NotFound
from dsbackup.keys import KeyLike, key_bytes, key_str

if TYPE_CHECKING:  # queries import it where they run: a backup or restore makes none
    from dsbackup.datastores.query import Entry, Query, Results

__all__ = [
    "BaseDatastore",
    "Batch",
    "Checkable",
    "Datastore",
    "DiskUsage",
    "Scrubbable",
    "NotFound",
]

DEFAULT_MAX_RECORDS = 4096
DEFAULT_MAX_BYTES = 8 << 20


@runtime_checkable
class Datastore(Protocol):
    """What every backend offers. See docs/DATASTORES.md."""

    uri: str
    parallel_readable: bool
    readonly: bool

    def get(self, key: KeyLike) -> bytes: ...
    def has(self, key: KeyLike) -> bool: ...
    def get_size(self, key: KeyLike) -> int: ...
    def put(self, key: KeyLike, value: bytes) -> None: ...
    def delete(self, key: KeyLike) -> None: ...
    def query(self, q: Query) -> Results: ...
    def sync(self, prefix: KeyLike = "/") -> None: ...
    def close(self) -> None: ...
    def batch(self) -> Batch: ...
    def scan_batches(self, start: bytes = b"", end: bytes | None = None, *,
                     max_records: int = DEFAULT_MAX_RECORDS,
                     max_bytes: int = DEFAULT_MAX_BYTES
                     ) -> Iterator[tuple[list[bytes], list[bytes]]]: ...
    def scan_key_sizes(self, start: bytes = b"", end: bytes | None = None, *,
                       max_records: int = DEFAULT_MAX_RECORDS
                       ) -> Iterator[tuple[list[bytes], list[int]]]: ...
    def put_many(self, keys: list[bytes], values: list[bytes]) -> None: ...
    def approx_count(self) -> int | None: ...
    def approx_size(self) -> int | None: ...
    def first_key(self) -> bytes | None: ...
    def last_key(self) -> bytes | None: ...
    def seek_key(self, key: bytes) -> bytes | None: ...
    def is_empty(self) -> bool: ...
    def __enter__(self) -> Datastore: ...
    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class DiskUsage(Protocol):
    """go-datastore's ``PersistentDatastore``: bytes the store occupies on disk."""

    def disk_usage(self) -> int: ...


@runtime_checkable
class Checkable(Protocol):
    """go-datastore's ``CheckedDatastore``: a quick structural check; raises
    :class:`~dsbackup.errors.DatastoreError` naming what is wrong."""

    def check(self) -> None: ...


@runtime_checkable
class Scrubbable(Protocol):
    """go-datastore's ``ScrubbedDatastore``: a full pass reading every record; raises
    :class:`~dsbackup.errors.DatastoreError` naming the first bad key or file."""

    def scrub(self) -> None: ...


class Batch:
    """Buffered puts and deletes applied by :meth:`commit` (go-datastore's ``Batch``).

    Used as a context manager it commits on normal exit and discards on an exception.
    The backend decides atomicity: LMDB, LevelDB, SQLite and memory apply a batch
    atomically; flatfs applies it file by file.
    """

    def __init__(self, ds: BaseDatastore) -> None:
        self._ds = ds
        self._ops: dict[bytes, bytes | None] = {}

    def put(self, key: KeyLike, value: bytes) -> None:
        self._ds._check_writable()
        k = key_bytes(key)
        self._ds._validate_key(k)
        self._ops[k] = bytes(value)

    def delete(self, key: KeyLike) -> None:
        self._ds._check_writable()
        self._ops[key_bytes(key)] = None

    def __len__(self) -> int:
        return len(self._ops)

    def commit(self) -> None:
        ops, self._ops = self._ops, {}
        if ops:
            self._ds._apply_batch(list(ops.items()))

    def discard(self) -> None:
        self._ops = {}

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def batch_items(items: Iterable[tuple[bytes, bytes]], max_records: int, max_bytes: int,
                ) -> Iterator[tuple[list[bytes], list[bytes]]]:
    """Group ``(key, value)`` pairs into ``(keys, values)`` batches of at most ``max_records``
    records, a batch ending once its values reach ``max_bytes`` (the fast scans' contract)."""
    keys: list[bytes] = []
    vals: list[bytes] = []
    size = 0
    for k, v in items:
        keys.append(k)
        vals.append(v)
        size += len(v)
        if len(keys) >= max_records or size >= max_bytes:
            yield keys, vals
            keys, vals, size = [], [], 0
    if keys:
        yield keys, vals


T = TypeVar("T")


def unbatch(batches: Iterable[tuple[list[bytes], list[T]]]) -> Iterator[tuple[bytes, T]]:
    """The records of ``(keys, values)`` or ``(keys, sizes)`` batches one by one: the
    primitives ``_iter_items`` / ``_iter_sizes`` of a store whose fast scans come first."""
    for keys, vals in batches:
        yield from zip(keys, vals)


class BaseDatastore(ABC):
    """Defaults for the :class:`Datastore` protocol built on a few primitives."""

    scheme: ClassVar[str] = ""
    parallel_readable: bool = False
    # put_many applies a batch whole or not at all (one transaction): a failed call left
    # nothing of it (a restore that failed so leaves the target as it was, engine/restore.py)
    atomic_put_many: ClassVar[bool] = False

    def __init__(self, uri: str, *, readonly: bool = False, location: str = "") -> None:
        self.uri = uri
        # where the store lives (its directory or file; "" for none): with `scheme`, what
        # the engine needs instead of re-parsing `uri`
        self.location = location
        self.readonly = readonly
        self._closed = False

    # -- primitives (every backend implements these four) --------------------------------
    @abstractmethod
    def _get(self, key: bytes) -> bytes:
        """The value, or raise :class:`NotFound`."""

    @abstractmethod
    def _put(self, key: bytes, value: bytes) -> None:
        """Store the value."""

    @abstractmethod
    def _delete(self, key: bytes) -> None:
        """Remove the key; a missing key is not an error."""

    @abstractmethod
    def _iter_items(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        """``(key, value)`` in ascending bytewise key order for ``start <= key < end``."""

    def _iter_sizes(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, int]]:
        """``(key, value size)`` in ascending order; default reads the values."""
        for k, v in self._iter_items(start, end):
            yield k, len(v)

    def _validate_key(self, key: bytes) -> None:  # noqa: B027 (optional hook: accept all)
        """Raise :class:`~dsbackup.errors.InvalidKey` for keys the backend cannot store."""

    # -- go-datastore API ----------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise DatastoreError(f"datastore {self.uri} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.readonly:
            raise DatastoreError(f"datastore {self.uri} is open read-only")

    def get(self, key: KeyLike) -> bytes:
        """The value stored at ``key``; raises :class:`NotFound` (a ``KeyError``)."""
        self._check_open()
        return self._get(key_bytes(key))

    def has(self, key: KeyLike) -> bool:
        self._check_open()
        try:
            self._get_size(key_bytes(key))
        except NotFound:
            return False
        return True

    def get_size(self, key: KeyLike) -> int:
        """The value's length in bytes; raises :class:`NotFound`."""
        self._check_open()
        return self._get_size(key_bytes(key))

    def _get_size(self, key: bytes) -> int:
        return len(self._get(key))

    def put(self, key: KeyLike, value: bytes) -> None:
        self._check_writable()
        k = key_bytes(key)
        self._validate_key(k)
        self._put(k, bytes(value))

    def delete(self, key: KeyLike) -> None:
        """Remove ``key``; deleting a missing key is not an error (as in go-datastore)."""
        self._check_writable()
        self._delete(key_bytes(key))

    def sync(self, prefix: KeyLike = "/") -> None:
        """Make writes under ``prefix`` durable. Backends that write durably are no-ops."""
        self._check_open()

    def batch(self) -> Batch:
        self._check_writable()
        return Batch(self)

    def _apply_batch(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        for k, v in ops:
            if v is None:
                self._delete(k)
            else:
                self._put(k, v)

    def query(self, q: Query) -> Results:
        """Run a query. Results come in key order unless ``q.orders`` says otherwise."""
        from dsbackup.datastores.query import Results, naive_apply, prefix_range

        self._check_open()
        start, end = prefix_range(q.prefix)
        return Results(q, naive_apply(q, self._query_entries(q, start, end),
                                      prefix_done=True, ordered_by_key=True))

    def _query_entries(self, q: Query, start: bytes, end: bytes | None) -> Iterator[Entry]:
        from dsbackup.datastores.query import Entry

        needs_values = not q.keys_only or any(
            not hasattr(f, "key") and not hasattr(f, "prefix") for f in q.filters
        ) or any(not _key_order(o) for o in q.orders)
        if needs_values:
            for k, v in self._iter_items(start, end):
                yield Entry(key_str(k), v, len(v))
        else:
            for k, n in self._iter_sizes(start, end):
                yield Entry(key_str(k), None, n)

    def close(self) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> BaseDatastore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "ro" if self.readonly else "rw"
        return f"<{type(self).__name__} {self.uri} {mode}>"

    # -- fast paths ----------------------------------------------------------------------
    def scan_batches(self, start: bytes = b"", end: bytes | None = None, *,
                     max_records: int = DEFAULT_MAX_RECORDS,
                     max_bytes: int = DEFAULT_MAX_BYTES
                     ) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """``(keys, values)`` batches for ``start <= key < end`` in increasing key order.

        A batch ends at ``max_records`` records or once its values reach ``max_bytes``.
        """
        self._check_open()
        yield from batch_items(self._iter_items(start, end), max_records, max_bytes)

    def scan_key_sizes(self, start: bytes = b"", end: bytes | None = None, *,
                       max_records: int = DEFAULT_MAX_RECORDS
                       ) -> Iterator[tuple[list[bytes], list[int]]]:
        """``(keys, value sizes)`` batches for ``start <= key < end`` in key order."""
        self._check_open()
        it = self._iter_sizes(start, end)
        while True:
            chunk = list(itertools.islice(it, max_records))
            if not chunk:
                return
            keys, sizes = zip(*chunk)
            yield list(keys), list(sizes)

    def _check_put_many(self, keys: list[bytes], values: list[bytes]) -> None:
        """What every ``put_many`` checks first: a writable store, a value for each key."""
        self._check_writable()
        if len(keys) != len(values):
            raise ValueError("put_many: keys and values differ in length")

    def put_many(self, keys: list[bytes], values: list[bytes]) -> None:
        """Store many records at once (one transaction where the backend has them)."""
        self._check_put_many(keys, values)
        for k in keys:
            self._validate_key(k)
        self._apply_batch(list(zip(keys, values)))

    def approx_count(self) -> int | None:
        """A cheap estimate of the record count, or ``None`` when none is cheap."""
        return None

    def approx_size(self) -> int | None:
        """A cheap estimate of the total value bytes, or ``None`` when none is cheap."""
        return None

    def first_key(self) -> bytes | None:
        return self.seek_key(b"")

    def last_key(self) -> bytes | None:
        last = None
        for keys, _ in self.scan_key_sizes(max_records=65536):
            last = keys[-1]
        return last

    def seek_key(self, key: bytes) -> bytes | None:
        """The first stored key ``>= key``, or ``None``."""
        self._check_open()
        for k, _ in self._iter_sizes(key, None):
            return k
        return None

    def is_empty(self) -> bool:
        return self.first_key() is None


def _key_order(o: object) -> bool:
    from dsbackup.datastores.query import OrderByKey, OrderByKeyDescending

    return isinstance(o, (OrderByKey, OrderByKeyDescending))
