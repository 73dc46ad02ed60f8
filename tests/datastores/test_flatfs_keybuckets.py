"""The keys of a flatfs store over ``max_names`` a bucket at a time (flatfs_keybuckets.py):
the same keys, trust flags and file audit as the in-memory listing (flatfs_fastlist.py), a
start key, two walks, the bounded listing's ``over``, and the spill directory removed after
success, an error and a stop; a full spill disk is a DatastoreError."""

from __future__ import annotations

import base64
import os
import random
import subprocess

import pytest

from dsbackup.datastores.flatfs import FlatfsDatastore
from dsbackup.datastores.flatfs_spill import SPILL_PREFIX
from dsbackup.errors import Cancelled, DatastoreError


def flat(keys) -> list[tuple[bytes, bool]]:
    return [(keys.key(i), keys.trusted(i)) for i in range(len(keys))]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """600 hash names, 20 that are not, a symbolic link under a hash name, a directory
    under one holding a file, a stray file (misfits), and the root's own files."""
    d = tmp_path_factory.mktemp("kb") / "src"
    rng = random.Random(4)
    ds = FlatfsDatastore(d, sync=False)
    keys = [b"/" + base64.b32encode(b"\x12\x20" + rng.randbytes(32)).rstrip(b"=")
            for _ in range(600)] + [b"/PLAIN%02d" % i for i in range(20)]
    ds.put_many(sorted(keys), [rng.randbytes(20) for _ in keys])
    ds.close()
    name = keys[3][1:].decode()
    shard = d / name[-3:-1]
    (shard / f"{name}.data").unlink()
    (shard / f"{name}.data").symlink_to(d / "SHARDING")
    name = keys[4][1:].decode()
    (d / name[-3:-1] / f"{name}.data").unlink()
    (d / name[-3:-1] / f"{name}.data").mkdir()
    (d / name[-3:-1] / f"{name}.data" / "inside").write_bytes(b"x")
    (shard / "stray").write_bytes(b"x")
    return d


def buckets_of(ds, start=b"") -> tuple[list, object]:
    kb = ds.key_buckets(start)
    try:
        return [flat(b) for b in kb.buckets()], kb
    finally:
        kb.close()


@pytest.mark.parametrize("max_names", [5, 37, 100_000])
def test_same_keys_flags_and_audit_as_the_in_memory_listing(root, tmp_path, max_names):
    ds = FlatfsDatastore(root, readonly=True, max_names=max_names, spill_dir=str(tmp_path))
    mem = ds.listing(2)
    got, kb = buckets_of(ds)
    assert [k for b in got for k in b] == flat(mem.keys)
    assert len(got) > 1 if max_names < 600 else len(got) == 1
    assert kb.peak_names <= max_names
    assert (kb.audit.count, kb.audit.examples) == (mem.audit.count, mem.audit.examples)
    assert mem.audit.count == 2  # the stray file, the file in the directory named like a block
    assert os.listdir(tmp_path) == []
    over = ds.listing(2, bounded=True)
    assert over.over == (max_names < 620) and (over.keys is None) == over.over


def test_from_a_start_key_and_walked_twice(root, tmp_path):
    ds = FlatfsDatastore(root, readonly=True, max_names=9, spill_dir=str(tmp_path))
    keys = flat(ds.listing(1).keys)
    start = keys[250][0]
    kb = ds.key_buckets(start)
    try:
        first = [k for b in kb.buckets() for k in flat(b)]
        assert first == keys[250:]
        assert [k for b in kb.buckets() for k in flat(b)] == first
        assert len(os.listdir(tmp_path)) == 1
    finally:
        kb.close()
    assert os.listdir(tmp_path) == []


def test_stopped_or_failed_leaves_no_spill(root, tmp_path):
    ds = FlatfsDatastore(root, readonly=True, max_names=9, spill_dir=str(tmp_path))
    with pytest.raises(Cancelled):
        ds.key_buckets(b"", lambda: True)
    assert os.listdir(tmp_path) == []
    kb = ds.key_buckets()
    it = kb.buckets()
    next(it)
    kb.close()  # in the middle of a walk
    assert not [n for n in os.listdir(tmp_path) if n.startswith(SPILL_PREFIX)]


def test_a_full_spill_disk_is_a_datastore_error(root, tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tiny)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (not root)")
    try:
        (tiny / "filler").write_bytes(b"\0" * (60 << 10))
        ds = FlatfsDatastore(root, readonly=True, max_names=9, spill_dir=str(tiny))
        with pytest.raises(DatastoreError, match="cannot write the spill file of a flatfs "
                                                 "listing: No space left on device"):
            ds.key_buckets()
        assert os.listdir(tiny) == ["filler"]
    finally:
        subprocess.run(["umount", str(tiny)], check=True)
