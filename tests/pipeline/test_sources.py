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
