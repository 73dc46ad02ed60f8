"""datastores/flatfs_fastlist.py and FlatfsDatastore.listing / read_keys: one native listing
gives the keys a scan reads and the same file audit as listing every shard in Python."""

from __future__ import annotations

import os
import random

from dsbackup.datastores import open_datastore
from dsbackup.datastores.flatfs import FlatfsDatastore
from dsbackup.datastores.flatfs_audit import audit_flatfs


def _store(path, n=300, shard=None):
    rng = random.Random(4)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    ds = FlatfsDatastore(path, shard=shard)
    keys = sorted({b"/" + bytes(rng.choice(alphabet) for _ in range(rng.randrange(2, 20)))
                   for _ in range(n)})
    ds.put_many(keys, [k * 3 for k in keys])
    return ds, keys


def test_listing_keys_are_the_scanned_keys(tmp_path):
    ds, keys = _store(tmp_path / "s")
    listing = ds.listing(3)
    assert listing.keys is not None and listing.audit.count == 0
    assert listing.keys.keys(0, len(listing.keys)) == keys
    assert [k for batch, _ in ds.scan_key_sizes() for k in batch] == keys
    ds.close()


def test_audit_matches_the_python_audit(tmp_path):
    ds, keys = _store(tmp_path / "s")
    root = tmp_path / "s"
    shard = next(p for p in root.iterdir() if p.is_dir() and p.name != ".temp")
    (shard / "stray.txt").write_bytes(b"x")
    (shard / "sub").mkdir()
    (shard / "sub" / "deep.data").write_bytes(b"x")
    (root / "top-level-file").write_bytes(b"x")
    wrong = next(p for p in root.iterdir() if p.is_dir() and p.name not in (".temp", shard.name))
    moved = next(shard.glob("*.data"))
    os.rename(moved, wrong / moved.name)  # in the wrong shard
    native = ds.audit_files()
    python = audit_flatfs(os.fsencode(root), ds.shard, go_layout=True)
    assert native.count == python.count == 4
    assert sorted(native.examples) == sorted(python.examples)
    listing = ds.listing()
    assert listing.audit.count == 4
    assert len(listing.keys) == len(keys) - 1  # the misplaced one is not read
    ds.close()


def test_read_keys_reads_in_order_and_counts_vanished_files(tmp_path):
    ds, keys = _store(tmp_path / "s")
    gone = keys[10]
    ds.delete(gone)
    got = [(k, v) for batch_k, batch_v in ds.read_keys(keys, max_records=7)
           for k, v in zip(batch_k, batch_v)]
    assert [k for k, _ in got] == [k for k in keys if k != gone]
    assert all(v == k * 3 for k, v in got)
    assert ds.skipped.count == 1 and gone[1:].decode() in ds.skipped.examples[0]
    ds.close()


def test_helia_names_keep_their_prefix_on_disk(tmp_path):
    ds = open_datastore(f"flatfs:{tmp_path / 'h'}?shard=suffix/2")
    ds.close()
    ds = FlatfsDatastore(tmp_path / "h", shard="suffix/2", name_prefix=b"B")
    ds.put_many([b"/CIQAAA", b"/CIQBBB"], [b"a", b"b"])
    assert ds.listing().keys.keys(0, 9) == [b"/CIQAAA", b"/CIQBBB"]
    assert all(p.name.startswith("B") for p in (tmp_path / "h").rglob("*.data"))
    ds.close()
