"""mount: go-datastore's routing (deepest strict ancestor, prefix stripped) and ordered,
shadow-free merging."""

from __future__ import annotations

import os

import pytest

from dsbackup.datastores import Query
from dsbackup.datastores.memory import MemoryDatastore
from dsbackup.datastores.mount import MountDatastore
from dsbackup.errors import DatastoreError, NotFound


def _mounted():
    root, a, ab = MemoryDatastore(), MemoryDatastore(), MemoryDatastore()
    m = MountDatastore([("/a", a), ("/", root), ("/a/b", ab)])
    return m, root, a, ab


def test_deepest_strict_ancestor_and_prefix_stripped():
    m, root, a, ab = _mounted()
    m.put("/a/b/c", b"1")
    m.put("/a/x", b"2")
    m.put("/a", b"3")  # /a is not a strict ancestor of itself: goes to the root
    m.put("/a/b", b"4")  # goes to /a as /b
    m.put("/ab", b"5")  # not under /a
    assert ab.get("/c") == b"1"
    assert a.get("/x") == b"2" and a.get("/b") == b"4"
    assert root.get("/a") == b"3" and root.get("/ab") == b"5"
    for k, v in [("/a/b/c", b"1"), ("/a/x", b"2"), ("/a", b"3"), ("/a/b", b"4")]:
        assert m.get(k) == v
    m.delete("/a/b/c")
    assert not ab.has("/c")


def test_queries_merge_in_key_order_and_hide_shadowed_keys():
    m, root, a, ab = _mounted()
    for k in ["/a/b/z", "/a/b/c", "/a/0", "/a/b", "/a/m", "/a-", "/a", "/b", "/"]:
        if k != "/":
            m.put(k, k.encode())
    root.put("/a/shadowed", b"unreachable")  # under /a, so get() cannot reach it
    a.put("/b/shadowed", b"unreachable")  # under /a/b
    with pytest.raises(NotFound):
        m.get("/a/shadowed")
    keys = [e.key for e in m.query(Query(keys_only=True))]
    assert keys == ["/a", "/a-", "/a/0", "/a/b", "/a/b/c", "/a/b/z", "/a/m", "/b"]
    assert [e.key for e in m.query(Query(prefix="/a"))] == [
        "/a/0", "/a/b", "/a/b/c", "/a/b/z", "/a/m"]
    assert [e.key for e in m.query(Query(prefix="/a/b"))] == ["/a/b/c", "/a/b/z"]
    scanned = [k for ks, _ in m.scan_batches(b"/a/", b"/a/b/d", max_records=2) for k in ks]
    assert scanned == [b"/a/0", b"/a/b", b"/a/b/c"]
    assert m.first_key() == b"/a" and m.last_key() == b"/b"
    assert m.seek_key(b"/a/b/") == b"/a/b/c"
    assert m.seek_key(b"/a/b/zz") == b"/a/m"
    assert m.approx_count() == 10  # children's counts, shadowed keys included


def test_no_root_mount():
    a = MemoryDatastore()
    m = MountDatastore([("/a", a)])
    m.put("/a/x", b"1")
    with pytest.raises(DatastoreError, match="no datastore mounted"):
        m.put("/b", b"1")
    with pytest.raises(NotFound):
        m.get("/b")
    assert not m.has("/b")
    m.delete("/b")
    assert [k for ks, _ in m.scan_batches() for k in ks] == [b"/a/x"]
    with pytest.raises(DatastoreError):
        MountDatastore([("/a", a), ("/a/", MemoryDatastore())])


def test_batches_and_put_many_split_per_child():
    m, root, a, ab = _mounted()
    with m.batch() as b:
        b.put("/a/b/1", b"x")
        b.put("/z", b"y")
        b.delete("/nothing")
    m.put_many([b"/a/q", b"/a/b/2"], [b"q", b"2"])
    assert ab.get("/1") == b"x" and ab.get("/2") == b"2"
    assert root.get("/z") == b"y" and a.get("/q") == b"q"


def test_last_key_when_root_holds_keys_beyond_a_segment():
    root, a = MemoryDatastore(), MemoryDatastore()
    m = MountDatastore([("/", root), ("/m", a)])
    root.put("/m/shadow", b"")  # the root's last key lies inside /m's segment
    root.put("/b", b"")
    assert m.last_key() == b"/b"
    a.put("/k", b"")
    assert m.last_key() == b"/m/k"


def test_chunk_basis_takes_the_counting_mounts_while_the_others_are_small(tmp_path):
    """The automatic chunk size's (records, bytes): the mounts that count, when a mount that
    cannot (a LevelDB) holds at most SMALL_PER_COUNTED records per counted record, estimated
    from its bytes (docs/DATASTORES.md)."""
    from dsbackup.datastores.leveldb import LevelDbDatastore
    from dsbackup.datastores.mount import SMALL_PER_COUNTED, SMALL_RECORD_BYTES

    blocks, level = MemoryDatastore(), LevelDbDatastore(tmp_path / "l")
    blocks.put_many([b"/b%03d" % i for i in range(100)], [b"x" * 4096] * 100)
    m = MountDatastore([("/blocks", blocks), ("/", level)])
    assert m.approx_count() is None and m.chunk_basis() is None  # no size asked yet
    m.approx_size()
    assert m.chunk_basis() == (100, 409_600)  # an empty LevelDB
    level.put_many([b"/p%05d" % i for i in range(100)], [os.urandom(200)] * 100)
    m.approx_count(), m.approx_size()
    assert m.chunk_basis() == (100, 409_600)  # ~22 KB in its log: few records
    many = SMALL_PER_COUNTED * SMALL_RECORD_BYTES * 100 // 200 + 1
    level.put_many([b"/q%05d" % i for i in range(many)], [os.urandom(200)] * many)
    m.approx_count(), m.approx_size()
    assert m.chunk_basis() is None  # LevelDB-heavy: the fallback
    all_count = MountDatastore([("/blocks", blocks), ("/", MemoryDatastore())])
    all_count.approx_count(), all_count.approx_size()
    assert all_count.chunk_basis() is None  # approx_count answers: no basis needed
    m.close()
