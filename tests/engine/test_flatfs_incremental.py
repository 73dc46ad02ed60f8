"""Incremental backups of flatfs stores at listing speed (engine/flatfs_incremental.py):
exact restores after additions, deletions and replacements, the same archive as the general
path, and what the fast path does not trust."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import shutil

import pytest

from dsbackup.archive.reader import ArchiveReader
from dsbackup.datastores import open_datastore
from dsbackup.engine import flatfs_incremental
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.engine.restore import restore_archive
from dsbackup.errors import BackupError

CFG = dict(chunk_size=8, chunk_max_bytes=4096, workers=2)  # natural and size cuts both


def block(rng: random.Random) -> tuple[bytes, bytes]:
    value = rng.randbytes(rng.randrange(100, 1500))
    name = base64.b32encode(b"\x12\x20" + hashlib.sha256(value).digest()).rstrip(b"=")
    return b"/" + name, value


def contents(ds) -> dict[bytes, bytes]:
    return {k: v for keys, values in ds.scan_batches() for k, v in zip(keys, values)}


def restored(archive, tmp_path, name) -> dict[bytes, bytes]:
    dst = open_datastore(f"flatfs:{tmp_path / name}", sync=False)  # compared, not kept
    try:
        restore_archive(archive, dst)
        return contents(dst)
    finally:
        dst.close()


def entries(path) -> list[tuple]:
    with ArchiveReader(path) as r:
        return [(e.first_key, e.last_key, e.records, e.payload_len, e.payload_xxh3,
                 e.keys_xxh3, e.flags, e.offset if e.in_parent else None)
                for e in r.index.entries()]


def summary(path) -> dict:
    with ArchiveReader(path) as r:
        s = dict(r.summary)
    return {k: s.get(k) for k in ("chunks", "records", "raw_bytes", "payload_bytes",
                                  "content_fingerprint", "referenced_chunks", "stored_chunks")}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The store of 600 blocks and its full backup, made once; each test gets a copy."""
    d = tmp_path_factory.mktemp("flatfs-template")
    rng = random.Random(11)
    ds = open_datastore(f"flatfs:{d / 'src'}")
    recs = dict(block(rng) for _ in range(600))
    keys = sorted(recs)
    ds.put_many(keys, [recs[k] for k in keys])
    BackupManager(BackupConfig(**CFG)).create_backup(ds, d / "p.tar.gz")
    ds.close()
    return d, rng.getstate()


@pytest.fixture
def store(tmp_path, template):
    d, state = template
    shutil.copytree(d / "src", tmp_path / "src", symlinks=True)
    shutil.copy2(d / "p.tar.gz", tmp_path / "p.tar.gz")
    rng = random.Random()
    rng.setstate(state)
    ds = open_datastore(f"flatfs:{tmp_path / 'src'}")
    yield ds, rng
    ds.close()


def general(monkeypatch, ds, out, parent, **cfg) -> None:
    with monkeypatch.context() as m:
        m.setattr(flatfs_incremental, "applies", lambda *a: False)
        BackupManager(BackupConfig(**{**CFG, **cfg})).create_backup(ds, out, parent=parent)


def mutate(ds, rng, how: str) -> None:
    keys = sorted(contents(ds))
    if how in ("deleted", "replaced", "ends"):
        gone = [keys[0], keys[-1]] if how == "ends" else rng.sample(keys, 6)
        for k in gone:
            ds.delete(k)
    if how in ("added", "replaced", "many"):
        new = dict(block(rng) for _ in range(60 if how == "many" else 6))
        ds.put_many(sorted(new), [new[k] for k in sorted(new)])


@pytest.mark.parametrize("how", ["unchanged", "added", "deleted", "replaced", "ends", "many"])
def test_same_archive_as_the_general_path_and_exact_restore(tmp_path, monkeypatch, store, how):
    ds, rng = store
    mutate(ds, rng, how)
    want = contents(ds)
    fast, slow = tmp_path / "fast.tar.gz", tmp_path / "slow.tar.gz"
    meta = BackupManager(BackupConfig(**CFG)).create_backup(
        f"flatfs:{tmp_path / 'src'}", fast, parent=tmp_path / "p.tar.gz")
    general(monkeypatch, ds, slow, tmp_path / "p.tar.gz")
    assert entries(fast) == entries(slow)
    assert summary(fast) == summary(slow)
    assert meta.total_keys == len(want) and meta.statistics.foreign_files == 0
    s = summary(fast)
    if how == "unchanged":
        assert s["stored_chunks"] == 0 and s["referenced_chunks"] == s["chunks"]
        with ArchiveReader(fast) as r:
            assert r.summary["chunks_read_to_compare"] == 0
    else:
        assert 0 < s["stored_chunks"] < s["chunks"]
    assert restored(fast, tmp_path, "dst") == want
    assert BackupManager().verify_backup(fast, check_blocks=True).ok


def test_a_chain_of_incrementals(tmp_path, monkeypatch, store):
    ds, rng = store
    parent = tmp_path / "p.tar.gz"
    mgr = BackupManager(BackupConfig(**CFG))
    for i in range(3):
        mutate(ds, rng, "replaced")
        out = tmp_path / f"i{i}.tar.gz"
        mgr.create_backup(ds, out, parent=parent)
        general(monkeypatch, ds, tmp_path / f"g{i}.tar.gz", parent)
        assert summary(out) == summary(tmp_path / f"g{i}.tar.gz")
        assert restored(out, tmp_path, f"d{i}") == contents(ds)
        parent = out


def test_catalog_archives(tmp_path, monkeypatch, store):
    ds, rng = store
    mgr = BackupManager(BackupConfig(**CFG, include_metadata=True))
    mgr.create_backup(ds, tmp_path / "pc.tar.gz")
    mutate(ds, rng, "replaced")
    mgr.create_backup(ds, tmp_path / "ic.tar.gz", parent=tmp_path / "pc.tar.gz")
    general(monkeypatch, ds, tmp_path / "gc.tar.gz", tmp_path / "pc.tar.gz",
            include_metadata=True)
    assert entries(tmp_path / "ic.tar.gz") == entries(tmp_path / "gc.tar.gz")
    assert restored(tmp_path / "ic.tar.gz", tmp_path, "dst") == contents(ds)
    # a parent without a catalog: nothing can be referenced, everything is read
    mgr.create_backup(ds, tmp_path / "ic2.tar.gz", parent=tmp_path / "p.tar.gz")
    s = summary(tmp_path / "ic2.tar.gz")
    assert s["stored_chunks"] == s["chunks"]


def _file(root, key: bytes):
    return next(root.rglob(key[1:].decode() + ".data"))


def test_names_that_are_not_hashes_are_read_and_compared(tmp_path, store):
    ds, _ = store
    ds.put_many([b"/LOCAL", b"/PINS"], [b"one", b"two"])
    mgr = BackupManager(BackupConfig(**CFG))
    mgr.create_backup(ds, tmp_path / "p2.tar.gz")
    _file(tmp_path / "src", b"/LOCAL").write_bytes(b"ONE")   # same size, other value
    mgr.create_backup(ds, tmp_path / "i.tar.gz", parent=tmp_path / "p2.tar.gz")
    s = summary(tmp_path / "i.tar.gz")
    assert s["stored_chunks"] == 1
    got = restored(tmp_path / "i.tar.gz", tmp_path, "dst")
    assert got[b"/LOCAL"] == b"ONE" and got == contents(ds)


def test_a_symbolic_link_is_read_not_trusted(tmp_path, store):
    ds, _ = store
    keys = sorted(contents(ds))
    victim, other = keys[100], keys[300]
    path = _file(tmp_path / "src", victim)
    path.unlink()
    os.symlink(_file(tmp_path / "src", other), path)
    mgr = BackupManager(BackupConfig(**CFG))
    mgr.create_backup(ds, tmp_path / "i.tar.gz", parent=tmp_path / "p.tar.gz")
    s = summary(tmp_path / "i.tar.gz")  # its value (and size) changed: its chunks moved
    assert 1 <= s["stored_chunks"] < s["chunks"] // 2
    got = restored(tmp_path / "i.tar.gz", tmp_path, "dst")
    assert got[victim] == got[other] and got == contents(ds)


def test_a_changed_file_under_a_hash_name_is_trusted_as_documented(tmp_path, store):
    """docs/INCREMENTAL.md: a file rewritten in place under its hash name is not read (the
    archive keeps the value the name stands for); --no-trust-content-keys reads everything."""
    ds, _ = store
    key = sorted(contents(ds))[50]
    original = ds.get(key)
    _file(tmp_path / "src", key).write_bytes(b"\0" * len(original))
    mgr = BackupManager(BackupConfig(**CFG))
    mgr.create_backup(ds, tmp_path / "i.tar.gz", parent=tmp_path / "p.tar.gz")
    assert summary(tmp_path / "i.tar.gz")["stored_chunks"] == 0
    assert restored(tmp_path / "i.tar.gz", tmp_path, "d1")[key] == original
    BackupManager(BackupConfig(**CFG, trust_content_keys=False)).create_backup(
        ds, tmp_path / "i2.tar.gz", parent=tmp_path / "p.tar.gz")
    assert summary(tmp_path / "i2.tar.gz")["stored_chunks"] == 1
    assert restored(tmp_path / "i2.tar.gz", tmp_path, "d2")[key] == b"\0" * len(original)


def test_foreign_files_fail_or_are_counted(tmp_path, store):
    ds, _ = store
    shard = next(p for p in (tmp_path / "src").iterdir() if p.is_dir() and p.name != ".temp")
    (shard / "stray.txt").write_bytes(b"x")
    uri = f"flatfs:{tmp_path / 'src'}"
    mgr = BackupManager(BackupConfig(**CFG))
    with pytest.raises(BackupError, match="stray.txt.*nothing was written"):
        mgr.create_backup(uri, tmp_path / "i.tar.gz", parent=tmp_path / "p.tar.gz")
    assert not (tmp_path / "i.tar.gz").exists()
    meta = BackupManager(BackupConfig(**CFG, skip_foreign=True)).create_backup(
        uri, tmp_path / "i.tar.gz", parent=tmp_path / "p.tar.gz")
    assert meta.statistics.foreign_files == 1
    assert any("stray.txt" in f for f in meta.statistics.skipped_files)
    assert summary(tmp_path / "i.tar.gz")["stored_chunks"] == 0


def test_the_path_is_taken_only_where_it_applies(tmp_path):
    cfg = BackupConfig()
    assert flatfs_incremental.applies(f"flatfs:{tmp_path}", cfg)
    assert not flatfs_incremental.applies(f"lmdb:{tmp_path}", cfg)
    assert not flatfs_incremental.applies(f"flatfs:{tmp_path}",
                                          BackupConfig(trust_content_keys=False))
    assert not flatfs_incremental.applies(f"flatfs:{tmp_path}",
                                          BackupConfig(exclude_patterns=["/A*"]))
