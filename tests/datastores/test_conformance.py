"""One conformance suite for every backend, ported from go-datastore's test/basic_tests.go
and test/batch_tests.go (key names, prefix vectors, offsets/limits and combinations are
go-datastore's). Expected results come from a reference written here, independent of the
library's query code."""

from __future__ import annotations

import functools
import itertools
import os

import pytest

from dsbackup.datastores import (
    FilterKeyCompare,
    FilterKeyPrefix,
    FilterValueCompare,
    OrderByFunction,
    OrderByKey,
    OrderByKeyDescending,
    OrderByValue,
    Query,
)
from dsbackup.datastores.base import Datastore
from dsbackup.datastores.query import Entry
from dsbackup.errors import NotFound
from dsbackup.keys import Key

ELEM_COUNT = 100


class EvenKeyLength:
    """go's testFilter: an unknown filter type (keeps keys of even length)."""

    def filter(self, e: Entry) -> bool:
        return len(e.key) % 2 == 0


def _rand() -> bytes:
    return os.urandom(64)


def _bytes_cmp(a: Entry, b: Entry) -> int:
    return ((a.value or b"") > (b.value or b"")) - ((a.value or b"") < (b.value or b""))


def _input(store, count: int) -> list[tuple[str, bytes]]:
    keys = []
    for tmpl in ("{i}key{i}", "/prefix/{i}key{i}", "/prefix/sub/{i}key{i}",
                 "/capital/{i}KEY{i}"):
        keys += [store.key(str(Key(tmpl.format(i=i)))) for i in range(count)]
    return [(k, _rand()) for k in keys]


def _reference(q: Query, data: list[tuple[str, bytes]]) -> list[Entry]:
    res = [Entry(k, v, len(v)) for k, v in data]
    prefix = str(Key(q.prefix))
    if prefix != "/":
        res = [e for e in res if e.key.startswith(prefix + "/")]
    for f in q.filters:
        res = [e for e in res if f.filter(e)]
    if q.orders:
        def cmp(a: Entry, b: Entry) -> int:
            for o in q.orders:
                c = o.compare(a, b)
                if c:
                    return c
            return (a.key > b.key) - (a.key < b.key)
        res.sort(key=functools.cmp_to_key(cmp))
    res = res[q.offset:]
    if q.limit:
        res = res[:q.limit]
    return res


def _check_query(ds, q: Query, data: list[tuple[str, bytes]]) -> None:
    results = ds.query(q)
    assert results.query is q
    actual = results.rest()
    expected = _reference(q, data)
    assert len(actual) == len(expected), (q, len(actual), len(expected))
    if not q.orders:
        actual.sort(key=lambda e: e.key)
        expected.sort(key=lambda e: e.key)
    for a, e in zip(actual, expected):
        assert a.key == e.key, q
        if q.keys_only:
            assert a.value is None
        else:
            assert a.value == e.value, (q, a.key)
        if q.returns_sizes or not q.keys_only:
            assert a.size == e.size, (q, a.key)


def _populate(ds, data) -> None:
    for k, v in data:
        ds.put(k, v)
    for k, v in data:
        assert ds.get(k) == v


def _clear(ds, data) -> None:
    for k, _ in data:
        ds.delete(k)
    assert ds.is_empty()


def _subtest_query(store, q: Query, count: int = ELEM_COUNT) -> None:
    data = _input(store, count)
    _populate(store.ds, data)
    _check_query(store.ds, _adapt(store, q), data)
    _clear(store.ds, data)


def _adapt(store, q: Query) -> Query:
    """Rewrite the key literals of a go test query into the backend's key space."""
    filters = []
    for f in q.filters:
        if isinstance(f, FilterKeyCompare):
            f = FilterKeyCompare(f.op, store.key(f.key))
        elif isinstance(f, FilterKeyPrefix):
            f = FilterKeyPrefix(store.key(f.prefix))
        filters.append(f)
    return Query(prefix=store.key(q.prefix) if q.prefix not in ("", "/") else q.prefix,
                 filters=filters, orders=q.orders, offset=q.offset, limit=q.limit,
                 keys_only=q.keys_only, returns_sizes=q.returns_sizes)


# -- basic_tests.go ------------------------------------------------------------------------

def test_satisfies_protocol(store):
    assert isinstance(store.ds, Datastore)
    assert isinstance(store.ds.uri, str) and store.ds.uri


def test_basic_put_get(store):
    ds = store.ds
    k = store.key("/foo")
    val = b"Hello Datastore!"
    ds.put(k, val)
    assert ds.has(k)
    assert ds.get_size(k) == len(val)
    assert ds.get(k) == val
    assert ds.has(k)
    assert ds.get_size(k) == len(val)
    ds.delete(k)
    assert not ds.has(k)
    with pytest.raises(NotFound):
        ds.get_size(k)


def test_not_founds(store):
    ds = store.ds
    bad = store.key("/notreal")
    with pytest.raises(NotFound):
        ds.get(bad)
    with pytest.raises(KeyError):  # NotFound is a KeyError
        ds.get(bad)
    assert not ds.has(bad)
    with pytest.raises(NotFound):
        ds.get_size(bad)
    ds.delete(bad)  # deleting a missing key is not an error


def test_overwrite_and_empty_value(store):
    ds = store.ds
    k = store.key("/over")
    ds.put(k, b"one")
    ds.put(k, b"")
    assert ds.get(k) == b"" and ds.get_size(k) == 0 and ds.has(k)
    ds.put(k, b"three")
    assert ds.get(k) == b"three"


@pytest.mark.parametrize("offset,limit", [
    (0, ELEM_COUNT // 10), (0, 0), (ELEM_COUNT // 10, 0), (ELEM_COUNT // 10, ELEM_COUNT // 10),
    (ELEM_COUNT // 10, ELEM_COUNT // 5), (ELEM_COUNT // 2, ELEM_COUNT // 5),
    (ELEM_COUNT - 1, ELEM_COUNT // 5), (ELEM_COUNT * 2, ELEM_COUNT // 5),
    (ELEM_COUNT * 2, 0), (ELEM_COUNT - 1, 0), (ELEM_COUNT - 5, 0),
])
def test_limit(store, offset, limit):
    _subtest_query(store, Query(orders=[OrderByKey()], offset=offset, limit=limit,
                                keys_only=True))


ORDERS = {
    "key": [OrderByKey()],
    "key-desc": [OrderByKeyDescending()],
    "value": [OrderByValue()],
    "value>key": [OrderByValue(), OrderByKey()],
    "function": [OrderByFunction(_bytes_cmp)],
}


@pytest.mark.parametrize("name", list(ORDERS))
def test_order(store, name):
    _subtest_query(store, Query(orders=ORDERS[name]))


def test_many_keys_and_query(store):
    _subtest_query(store, Query(keys_only=True))


def test_basic_sync(store):
    ds = store.ds
    ds.sync(store.key("prefix"))
    ds.put(store.key("/prefix"), b"foo")
    ds.sync(store.key("/prefix"))
    ds.put(store.key("/prefix/sub"), b"bar")
    ds.sync(store.key("/prefix"))
    ds.sync(store.key("/prefix/sub"))
    ds.sync("")
    assert ds.get(store.key("/prefix/sub")) == b"bar"


FILTERS = {
    "key=": [FilterKeyCompare("=", "/0key0")],
    "key<": [FilterKeyCompare("<", "/2")],
    "key-prefix": [FilterKeyPrefix("/0key0")],
    "value<": [FilterValueCompare("<", _rand())],
    "custom": [EvenKeyLength()],
}


@pytest.mark.parametrize("name", list(FILTERS))
def test_filter(store, name):
    _subtest_query(store, Query(filters=FILTERS[name]))


def test_return_sizes(store):
    _subtest_query(store, Query(returns_sizes=True, keys_only=True))


@pytest.mark.parametrize("prefix", ["", "/", "/./", "/.././/", "/prefix/../", "/prefix",
                                    "/prefix/", "/prefix/sub/", "/0/", "/bad/"])
def test_prefix(store, prefix):
    _subtest_query(store, Query(prefix=prefix))


def test_combinations(store):
    """go's SubtestCombinations: every offset x limit x filter x order x prefix, for store
    sizes 0, 1 and ELEM_COUNT (the store is filled once per size, queries do not write)."""
    n = ELEM_COUNT
    offsets = [0, n // 10, n - 5, n]
    limits = [0, 1, n // 10, n]
    filters = [[FilterKeyCompare("=", "/0key0")], [FilterKeyCompare("<", "/2")]]
    prefixes = ["", "/prefix", "/0"]
    orders = [[OrderByKey()], [OrderByKeyDescending()], [OrderByValue(), OrderByKey()],
              [OrderByFunction(_bytes_cmp)]]
    for length in (0, 1, n):
        data = _input(store, length)
        _populate(store.ds, data)
        for off, lim, flt, order, prefix in itertools.product(offsets, limits, filters,
                                                             orders, prefixes):
            q = Query(offset=off, limit=lim, filters=flt, orders=order, prefix=prefix)
            _check_query(store.ds, _adapt(store, q), data)
        _clear(store.ds, data)


# -- batch_tests.go ------------------------------------------------------------------------

def _batch_keys(store, n=100):
    return [(store.key(f"/batch{i:03d}key"), os.urandom(256)) for i in range(n)]


def test_batch_put(store):
    ds = store.ds
    data = _batch_keys(store)
    b = ds.batch()
    for k, v in data:
        b.put(k, v)
    for k, _ in data:
        assert not ds.has(k), "batch wrote before commit"
    b.commit()
    for k, v in data:
        assert ds.get(k) == v


def test_batch_delete(store):
    ds = store.ds
    data = _batch_keys(store)
    for k, v in data:
        ds.put(k, v)
    b = ds.batch()
    for k, _ in data:
        b.delete(k)
    b.commit()
    for k, _ in data:
        assert not ds.has(k)


def test_batch_put_and_delete(store):
    ds = store.ds
    a, b_, c = store.key("/a"), store.key("/b"), store.key("/c")
    ds.put(c, b"c0")
    batch = ds.batch()
    batch.put(a, b"a1")
    batch.put(b_, b"b1")
    batch.delete(a)
    batch.delete(c)
    batch.put(b_, b"b2")
    batch.commit()
    assert not ds.has(a) and not ds.has(c)
    assert ds.get(b_) == b"b2"


def test_batch_context_manager_commits_or_discards(store):
    ds = store.ds
    k1, k2 = store.key("/ctx1"), store.key("/ctx2")
    with ds.batch() as b:
        b.put(k1, b"1")
    assert ds.get(k1) == b"1"
    with pytest.raises(RuntimeError), ds.batch() as b:
        b.put(k2, b"2")
        raise RuntimeError("abort")
    assert not ds.has(k2)


# -- beyond go-datastore: results, fast paths --------------------------------------------

def test_results_close_early_then_write(store):
    ds = store.ds
    data = _input(store, 20)
    _populate(ds, data)
    with ds.query(Query()) as res:
        first = next(res)
        assert first.key
    res.close()  # idempotent
    assert list(res) == []
    ds.put(store.key("/after"), b"x")  # nothing held open blocks writers
    it = ds.scan_batches(max_records=3)
    next(it)
    it.close()
    ds.put(store.key("/after2"), b"y")


def test_scan_fast_paths(store):
    ds = store.ds
    data = _input(store, 30)
    _populate(ds, data)
    want = sorted((Key(k).raw, v) for k, v in data)
    got = [(k, v) for ks, vs in ds.scan_batches(max_records=7) for k, v in zip(ks, vs)]
    assert got == want
    sizes = [(k, n) for ks, ns in ds.scan_key_sizes(max_records=5) for k, n in zip(ks, ns)]
    assert sizes == [(k, len(v)) for k, v in want]
    # [start, end) with bounds that are, and are not, stored keys
    lo, hi = want[10][0], want[50][0]
    part = [k for ks, _ in ds.scan_batches(lo, hi) for k in ks]
    assert part == [k for k, _ in want[10:50]]
    part = [k for ks, _ in ds.scan_batches(lo + b"\x00", hi + b"\x00") for k in ks]
    assert part == [k for k, _ in want[11:51]]
    assert [k for ks, _ in ds.scan_batches(hi, lo) for k in ks] == []
    # max_bytes cuts batches
    batches = list(ds.scan_batches(max_records=1000, max_bytes=200))
    assert all(sum(map(len, vs)) < 200 + 64 for _, vs in batches)
    assert sum(len(ks) for ks, _ in batches) == len(want)
    assert ds.first_key() == want[0][0]
    assert ds.last_key() == want[-1][0]
    assert ds.seek_key(lo) == lo
    assert ds.seek_key(lo + b"\x00") == want[11][0]
    assert ds.seek_key(b"\xff") is None
    assert not ds.is_empty()
    count = ds.approx_count()
    assert count is None or count == len(want)


def test_put_many(store):
    ds = store.ds
    data = sorted((Key(store.key(f"/pm/{i:05d}")).raw, os.urandom(i % 50)) for i in range(500))
    ds.put_many([k for k, _ in data], [v for _, v in data])
    more = [(Key(store.key("/aaa")).raw, b"first"), (Key(store.key("/zzz")).raw, b"last")]
    ds.put_many([k for k, _ in more], [v for _, v in more])
    got = [(k, v) for ks, vs in ds.scan_batches() for k, v in zip(ks, vs)]
    assert got == sorted(data + more)
    with pytest.raises(ValueError):
        ds.put_many([b"/x"], [])


def test_empty_store(store):
    ds = store.ds
    assert ds.is_empty()
    assert ds.first_key() is None and ds.last_key() is None
    assert list(ds.scan_batches()) == [] and list(ds.scan_key_sizes()) == []
    assert ds.query(Query()).rest() == []


def test_context_manager_closes(store):
    with store.ds as ds:
        ds.put(store.key("/cm"), b"1")
    assert ds.closed
    with pytest.raises(Exception):  # noqa: B017 - any DatastoreError
        ds.get(store.key("/cm"))
