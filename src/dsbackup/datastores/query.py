"""Queries with go-datastore semantics: prefix, filters, orders, offset, limit.

A query's prefix selects children only: ``/foo`` matches ``/foo/bar`` but not ``/foo`` or
``/foobar``. The prefix is cleaned like a key first, so ``""``, ``/``, ``/./`` and
``/prefix/../`` all mean "everything". Filters apply in sequence, then orders (ties broken by
key, bytewise), then offset, then limit (0 means no limit), as go-datastore's
``NaiveQueryApply`` does.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

from dsbackup.keys import Key, children_range

__all__ = [
    "Entry",
    "Filter",
    "FilterKeyCompare",
    "FilterKeyPrefix",
    "FilterValueCompare",
    "Order",
    "OrderByFunction",
    "OrderByKey",
    "OrderByKeyDescending",
    "OrderByValue",
    "OrderByValueDescending",
    "Query",
    "Results",
    "naive_apply",
    "prefix_range",
]


class Entry(NamedTuple):
    """One query result. ``key`` is the key as ``str`` (``Key(entry.key)`` or ``raw_key``
    gives the exact bytes back); ``value`` is ``None`` for keys-only queries; ``size`` is the
    value's length, or -1 when the backend did not report it."""

    key: str
    value: bytes | None
    size: int

    @property
    def raw_key(self) -> bytes:
        return self.key.encode("utf-8", "surrogateescape")


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


@runtime_checkable
class Filter(Protocol):
    def filter(self, entry: Entry) -> bool: ...


@dataclass(frozen=True)
class FilterKeyCompare:
    """Keep entries whose key compares to ``key`` with ``op`` (one of = != > >= < <=)."""

    op: str
    key: str

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"unknown filter operator {self.op!r}")

    def filter(self, entry: Entry) -> bool:
        return _OPS[self.op](entry.raw_key, self.key.encode("utf-8", "surrogateescape"))


@dataclass(frozen=True)
class FilterValueCompare:
    """Keep entries whose value compares to ``value`` with ``op`` (bytewise)."""

    op: str
    value: bytes

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"unknown filter operator {self.op!r}")

    def filter(self, entry: Entry) -> bool:
        if entry.value is None:
            return False
        return _OPS[self.op](entry.value, self.value)


@dataclass(frozen=True)
class FilterKeyPrefix:
    """Keep entries whose key starts with ``prefix`` (plain string prefix, not namespaces)."""

    prefix: str

    def filter(self, entry: Entry) -> bool:
        return entry.key.startswith(self.prefix)


@runtime_checkable
class Order(Protocol):
    def compare(self, a: Entry, b: Entry) -> int: ...


def _cmp(x: Any, y: Any) -> int:
    return (x > y) - (x < y)


class OrderByKey:
    def compare(self, a: Entry, b: Entry) -> int:
        return _cmp(a.raw_key, b.raw_key)


class OrderByKeyDescending:
    def compare(self, a: Entry, b: Entry) -> int:
        return -_cmp(a.raw_key, b.raw_key)


class OrderByValue:
    def compare(self, a: Entry, b: Entry) -> int:
        return _cmp(a.value or b"", b.value or b"")


class OrderByValueDescending:
    def compare(self, a: Entry, b: Entry) -> int:
        return -_cmp(a.value or b"", b.value or b"")


@dataclass(frozen=True)
class OrderByFunction:
    """Order by a comparison function returning <0, 0 or >0."""

    fn: Callable[[Entry, Entry], int]

    def compare(self, a: Entry, b: Entry) -> int:
        return self.fn(a, b)


@dataclass
class Query:
    """go-datastore's ``query.Query``. ``limit=0`` means no limit."""

    prefix: str = ""
    filters: Sequence[Filter] = field(default_factory=tuple)
    orders: Sequence[Order] = field(default_factory=tuple)
    offset: int = 0
    limit: int = 0
    keys_only: bool = False
    returns_sizes: bool = False

    def __post_init__(self) -> None:
        if self.offset < 0 or self.limit < 0:
            raise ValueError("query offset and limit must be >= 0")

    @property
    def prefix_key(self) -> Key:
        return Key(self.prefix)

    def only_key_order(self) -> bool:
        """True when the orders reduce to ascending key order (what every scan yields)."""
        return all(isinstance(o, OrderByKey) for o in self.orders)


def prefix_range(prefix: str | bytes | Key) -> tuple[bytes, bytes | None]:
    """The ``[start, end)`` byte range holding the children of a query prefix.

    The children of ``/foo`` are exactly the keys in ``[b"/foo/", b"/foo0")`` because ``0``
    is the byte after ``/``. The root prefix gives the whole key space (:func:`children_range`).
    """
    return children_range(prefix)


class Results:
    """Query results: iterate for :class:`Entry` values; close early with :meth:`close`
    (or use as a context manager), which releases the backend's transaction or cursor."""

    def __init__(self, query: Query, entries: Iterator[Entry]) -> None:
        self.query = query
        self._it = entries
        self._closed = False

    def __iter__(self) -> Iterator[Entry]:
        return self

    def __next__(self) -> Entry:
        if self._closed:
            raise StopIteration
        try:
            return next(self._it)
        except StopIteration:
            self.close()
            raise

    def rest(self) -> list[Entry]:
        """All remaining entries, then close."""
        try:
            return list(self)
        finally:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            close = getattr(self._it, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> Results:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass


def _order_key(orders: Sequence[Order]) -> Callable[[Entry], Any]:
    def cmp(a: Entry, b: Entry) -> int:
        for o in orders:
            c = o.compare(a, b)
            if c:
                return -1 if c < 0 else 1
        return _cmp(a.raw_key, b.raw_key)

    return functools.cmp_to_key(cmp)


def naive_apply(q: Query, entries: Iterable[Entry], *, prefix_done: bool = False,
                ordered_by_key: bool = False) -> Iterator[Entry]:
    """Apply a query to entries the slow, obviously correct way (go's ``NaiveQueryApply``).

    ``prefix_done`` says the entries already hold only the prefix's children;
    ``ordered_by_key`` says they arrive in ascending key order (then key orders need no sort).
    """
    it: Iterable[Entry] = entries
    if not prefix_done:
        start, end = prefix_range(q.prefix)
        if start:
            it = (e for e in it if start <= e.raw_key < end)  # type: ignore[operator]
    for f in q.filters:
        it = filter(f.filter, it)
    if q.orders and not (ordered_by_key and q.only_key_order()):
        it = iter(sorted(it, key=_order_key(q.orders)))
    if q.offset:
        it = _skip(it, q.offset)
    if q.limit:
        it = _take(it, q.limit)
    if q.keys_only:
        it = (Entry(e.key, None, e.size) if e.value is not None else e for e in it)
    return iter(it)


def _skip(it: Iterable[Entry], n: int) -> Iterator[Entry]:
    it = iter(it)
    for _ in range(n):
        if next(it, None) is None:
            return
    yield from it


def _take(it: Iterable[Entry], n: int) -> Iterator[Entry]:
    for i, e in enumerate(it):
        if i >= n:
            return
        yield e
