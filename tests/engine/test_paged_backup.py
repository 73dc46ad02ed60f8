"""Backups with a paged index (docs/FORMAT.md §11.3) through the engine: full, incremental,
consolidated and encrypted archives; restore and ls of a prefix; `auto` keeps small archives
on the version-1 index."""

from __future__ import annotations

import random

import pytest

from dsbackup.archive.consolidate import consolidate_archive
from dsbackup.archive.crypto import KeyMaterial, using_key
from dsbackup.archive.reader import ArchiveReader
from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.engine.restore import restore_archive
from dsbackup.errors import ConfigError


def contents(ds) -> dict[bytes, bytes]:
    return {k: v for keys, values in ds.scan_batches() for k, v in zip(keys, values)}


def restored(archive, tmp_path, name, **kw) -> dict[bytes, bytes]:
    dst = open_datastore(f"lmdb:{tmp_path / name}")
    try:
        restore_archive(archive, dst, **kw)
        return contents(dst)
    finally:
        dst.close()


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("DSBACKUP_TEST_PAGE_ENTRIES", "256")
    rng = random.Random(11)
    model = {b"/r/%02d/%06d" % (i % 40, i): rng.randbytes(rng.randrange(10, 200))
             for i in range(12000)}
    ds = open_datastore(f"lmdb:{tmp_path / 'src'}")
    keys = sorted(model)
    ds.put_many(keys, [model[k] for k in keys])
    yield ds, model, rng
    ds.close()


def _paged(path) -> tuple[bool, int]:
    with ArchiveReader(path) as r:
        return r.paged, (r.index.page_count if r.paged else 0)


def test_full_incremental_consolidated_paged(tmp_path, store, run_cli, cli_env):
    ds, model, rng = store
    mgr = BackupManager(BackupConfig(chunk_size=8, workers=2, paged_index="always",
                                     include_metadata=True))
    full = mgr.create_backup(ds, tmp_path / "full.tar.gz")
    paged, pages = _paged(tmp_path / "full.tar.gz")
    assert paged and pages == -(-full.chunks // 256) >= 4
    flat = BackupManager(BackupConfig(chunk_size=8, workers=2, paged_index="never",
                                      include_metadata=True)).create_backup(
        ds, tmp_path / "flat.tar.gz")
    assert flat.fingerprint == full.fingerprint and not _paged(tmp_path / "flat.tar.gz")[0]
    assert restored(tmp_path / "full.tar.gz", tmp_path, "d1") == model
    # a prefix: children of /r/07
    want = {k: v for k, v in model.items() if k.startswith(b"/r/07/")}
    assert restored(tmp_path / "full.tar.gz", tmp_path, "d2", prefix="/r/07") == want
    # the CLI: ls --prefix and verify
    r = run_cli("ls", tmp_path / "full.tar.gz", "--prefix", "/r/07")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [k.decode() for k in sorted(want)]
    assert run_cli("verify", tmp_path / "full.tar.gz").returncode == 0
    # an incremental of a paged parent is paged (auto), references and stored chunks mixed
    for k in rng.sample(sorted(model), 30):
        model[k] = b"changed"
        ds.put(k, model[k])
    auto = BackupManager(BackupConfig(chunk_size=8, workers=2, include_metadata=True))
    inc = auto.create_backup(ds, tmp_path / "inc.tar.gz", parent=tmp_path / "full.tar.gz")
    with ArchiveReader(tmp_path / "inc.tar.gz") as r:
        assert r.paged and r.index.page_entries == 256
        assert 0 < r.summary["stored_chunks"] < r.chunk_count
    assert auto.verify_backup(tmp_path / "inc.tar.gz").ok
    assert restored(tmp_path / "inc.tar.gz", tmp_path, "d3") == model
    cons = consolidate_archive(tmp_path / "inc.tar.gz", tmp_path / "cons.tar.gz")
    with ArchiveReader(tmp_path / "inc.tar.gz") as r:
        assert cons.fingerprint == r.summary["content_fingerprint"] != inc.fingerprint
    assert _paged(tmp_path / "cons.tar.gz")[0]
    assert restored(tmp_path / "cons.tar.gz", tmp_path, "d4") == model
    assert auto.verify_backup(tmp_path / "cons.tar.gz").ok


def test_encrypted_incremental_paged(tmp_path, store):
    ds, model, rng = store
    key = KeyMaterial(key=bytes(range(32)))
    cfg = BackupConfig(chunk_size=8, workers=2, paged_index="always", encryption=key)
    mgr = BackupManager(cfg)
    mgr.create_backup(ds, tmp_path / "full.tar.gz")
    for k in rng.sample(sorted(model), 10):
        model[k] = b"x"
        ds.put(k, model[k])
    mgr.create_backup(ds, tmp_path / "inc.tar.gz", parent=tmp_path / "full.tar.gz")
    with using_key(key):
        assert _paged(tmp_path / "inc.tar.gz")[0]
        assert mgr.verify_backup(tmp_path / "inc.tar.gz").ok
        assert restored(tmp_path / "inc.tar.gz", tmp_path, "d") == model


def test_auto_keeps_small_archives_on_the_single_index(tmp_path, store, monkeypatch):
    ds, model, _ = store
    monkeypatch.delenv("DSBACKUP_TEST_PAGE_ENTRIES")
    BackupManager(BackupConfig(chunk_size=8, workers=2)).create_backup(ds, tmp_path / "a.tar.gz")
    with ArchiveReader(tmp_path / "a.tar.gz") as r:
        assert not r.paged and r.version == 1
    with pytest.raises(ConfigError, match="paged_index"):
        BackupConfig(paged_index="yes")


def test_cli_paged_index_option(tmp_path, store, run_cli):
    out = tmp_path / "cli.tar.gz"
    r = run_cli("backup", f"lmdb:{tmp_path / 'src'}", out, "--chunk-size", "8",
                "--paged-index", "always", "--workers", "1")
    assert r.returncode == 0, r.stderr
    paged, pages = _paged(out)
    assert paged and pages >= 4  # DSBACKUP_TEST_PAGE_ENTRIES=256 reaches the child
    r = run_cli("backup", f"lmdb:{tmp_path / 'src'}", tmp_path / "x.tar.gz",
                "--paged-index", "sometimes")
    assert r.returncode == 2 and "paged-index" in r.stderr


def test_unchanged_incremental_has_pages_of_references_only(tmp_path, store):
    ds, model, _ = store
    mgr = BackupManager(BackupConfig(chunk_size=8, workers=2, paged_index="always"))
    mgr.create_backup(ds, tmp_path / "full.tar.gz")
    mgr.create_backup(ds, tmp_path / "inc.tar.gz", parent=tmp_path / "full.tar.gz")
    with ArchiveReader(tmp_path / "inc.tar.gz") as r:
        assert r.paged and r.summary["stored_chunks"] == 0
        # no member between the pages: each page's part of the file is empty
        root = r.index._root
        assert int(root["offset"][0]) == r.manifest_end
        assert all(int(root["offset"][p]) == int(root["offset"][p - 1] + root["length"][p - 1])
                   for p in range(1, r.index.page_count))
    assert mgr.verify_backup(tmp_path / "inc.tar.gz").ok
    assert restored(tmp_path / "inc.tar.gz", tmp_path, "d", prefix="/r/03") == {
        k: v for k, v in model.items() if k.startswith(b"/r/03/")}
