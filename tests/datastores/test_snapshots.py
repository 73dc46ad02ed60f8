"""Scans of LMDB, LevelDB and SQLite are snapshots: writes made while a scan is running
(here from the same process, between batches) are not seen by it."""

from __future__ import annotations

import pytest
from ds_backends import make_store


@pytest.mark.parametrize("kind", ["lmdb", "leveldb", "sqlite"])
def test_scan_is_a_snapshot(kind, tmp_path):
    store = make_store(kind, tmp_path)
    ds = store.ds
    keys = [b"/s/%04d" % i for i in range(300)]
    ds.put_many(keys, [b"old"] * len(keys))
    scan = ds.scan_batches(max_records=50)
    seen_keys, seen_vals = next(scan)
    ds.put_many([b"/s/0200", b"/s/0250x", b"/t"], [b"new", b"new", b"new"])
    ds.delete(b"/s/0299")
    for ks, vs in scan:
        seen_keys += ks
        seen_vals += vs
    assert seen_keys == keys
    assert set(seen_vals) == {b"old"}
    after = [k for ks, _ in ds.scan_batches() for k in ks]
    assert b"/t" in after and b"/s/0299" not in after
    ds.close()
