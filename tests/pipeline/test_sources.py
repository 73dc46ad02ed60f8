"""pipeline/sources.py in process, as an incremental backup uses it: a datastore's plans and
framed ranges equal the native LMDB scanner's for the same records."""

from __future__ import annotations

import random

from dsbackup import datasets
from dsbackup.datastores import open_datastore
from dsbackup.pipeline.central import ChunkSettings
from dsbackup.pipeline.sources import DatastoreSource, LmdbSource


def records():
    rng = random.Random(5)
    recs = {b"/blocks/%06d" % i: rng.randbytes(rng.randrange(0, 900)) for i in range(300)}
    recs.update({b"/pins/%04d" % i: b"pin" * i for i in range(50)})
    return recs


def framed(src, start=b"", end=None):
    return [(bytes(c.first_key), bytes(c.last_key), c.record_count, c.payload_xxh3)
            for c in src.frame(start, end)]


def test_datastore_and_lmdb_sources_plan_and_frame_alike(tmp_path):
    path = tmp_path / "s"
    datasets.write_lmdb(str(path), iter(records().items()))
    settings = ChunkSettings(16, 1 << 20, -1, ("/pins/**",), False)
    ds = open_datastore(f"lmdb:{path}", readonly=True)
    try:
        a = DatastoreSource(ds, settings)
        plans_a = list(a.plans())
        excluded_a = a.excluded
        frames_a = framed(a)
        mid = frames_a[3][0]
        part_a = framed(a, mid, None)
        assert a.has_prefix(b"/blocks/") and not a.has_prefix(b"/none/")
        rest_a = list(DatastoreSource(ds, settings).plans(mid))  # a resumed incremental's
        assert rest_a == plans_a[3:]
        a.close()
        assert not ds.closed  # the caller's datastore stays open
    finally:
        ds.close()
    b = LmdbSource(str(path), settings, claim_for="test")
    try:
        assert list(b.plans()) == plans_a
        assert b.excluded == excluded_a == (50, sum(len(b"/pins/%04d" % i) + 3 * i
                                                    for i in range(50)))
        assert framed(b) == frames_a
        assert framed(b, mid, None) == part_a
        assert b.has_prefix(b"/blocks/") and not b.has_prefix(b"/none/")
    finally:
        b.close()
    c = LmdbSource(str(path), settings)
    try:
        assert list(c.plans(mid)) == rest_a
    finally:
        c.close()
    assert len(plans_a) > 5


def _sqlite_store(path, n=600):
    ds = open_datastore(f"sqlite:{path}")
    keys = [b"/k/%05d" % i for i in range(n)]
    ds.put_many(keys, [b"old-" + k for k in keys])
    ds.close()
    return keys


def _commit(path, ops):
    """One transaction of another writer (an application writing the store meanwhile)."""
    import sqlite3

    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for k, v in ops:
            if v is None:
                conn.execute("DELETE FROM datastore WHERE key = ?", (k,))
            else:
                conn.execute("UPDATE datastore SET value = ? WHERE key = ?", (v, k))
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_an_sqlite_source_reads_one_snapshot_while_the_store_is_written(tmp_path):
    """An incremental backup of an SQLite store plans from keys and sizes, then reads the
    values of the chunks it must compare: each scan was its own statement, hence its own
    snapshot, so a transaction committed in between (here: the first and the last key
    rewritten together, one deleted) reached the archive half (a value from one state, its
    neighbour from another). Every scan of a source now reads the snapshot pinned when it
    was opened."""
    path = tmp_path / "s.db"
    keys = _sqlite_store(path)
    settings = ChunkSettings(16, 1 << 20, -1, (), False)
    ds = open_datastore(f"sqlite:{path}", readonly=True)
    try:
        src = DatastoreSource(ds, settings)
        plans = src.plans()
        first_plan = next(plans)
        _commit(path, [(keys[0], b"new-0-longer"), (keys[-1], b"new-1-longer"),
                       (keys[300], None)])
        rest = list(plans)
        records = sum(p[2] for p in [first_plan, *rest])
        framed_first = list(src.frame(b"", None))
        values = b"".join(bytes(c.payload) for c in framed_first)
        src.close()
        assert not ds.closed
        fresh = DatastoreSource(ds, settings)  # a new source: the new state
        later = b"".join(bytes(c.payload) for c in fresh.frame(b"", None))
        fresh.close()
    finally:
        ds.close()
    assert records == len(keys)  # the plans: one state, the key deleted later still there
    assert b"new-" not in values and values.count(b"old-") == len(keys)
    assert b"new-0-longer" in later and b"new-1-longer" in later
