"""A restore that fails before it has written anything leaves the target and its directory as
they were: no journal beside it (dsbackup.engine.restore). The journal makes a later `backup`
of the store refuse it ("a restore into it did not finish") and a restore of another archive
into it too; left by a restore that changed nothing, it broke a nightly backup for nothing.

Before this fix only a restore into an *empty* target removed it: `restore --overwrite` (or
`--skip-existing`) of an archive whose first chunk is damaged, into an existing store, left it
(exit 3, nothing written, and the next `backup` of that store exit 2)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from storerecords import store_records

from dsbackup.archive.reader import ArchiveReader
from dsbackup.datastores import open_datastore
from dsbackup.datastores.lmdb import LmdbDatastore
from dsbackup.engine.restore import restore_archive
from dsbackup.errors import DatastoreError

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"


def _damaged_first_chunk(src: Path, dst: Path) -> Path:
    """A copy of `src` with a byte of chunk 0's member flipped (its member XXH3 no longer
    matches: found when the chunk is read, after the journal is written)."""
    with ArchiveReader(src) as r:
        e = r.entry(0)
    data = bytearray(src.read_bytes())
    data[e.offset + e.length // 2] ^= 0x10
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("mode", ["--overwrite", "--skip-existing"])
@pytest.mark.parametrize("scheme", ["lmdb", "sqlite", "flatfs"])
def test_a_damaged_first_chunk_leaves_no_journal_beside_an_existing_store(tmp_path, run_cli,
                                                                         scheme, mode):
    name = "flatfs-full.tar.gz" if scheme == "flatfs" else "full.tar.gz"
    good = GOLDEN / ("flatfs-incr.tar.gz" if scheme == "flatfs" else "exclude.tar.gz")
    target = tmp_path / "store"
    spec = f"{scheme}:{target}"
    assert run_cli("restore", good, spec).returncode == 0
    before = store_records(spec)
    bad = _damaged_first_chunk(GOLDEN / name, tmp_path / "bad.tar.gz")
    r = run_cli("restore", bad, spec, mode)
    assert r.returncode == 3, r.stderr
    assert "chunk 0" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("store")) == \
        ["store"]  # no journal (nor lock) beside it
    assert store_records(spec) == before
    r = run_cli("backup", spec, tmp_path / "b.tar.gz")  # the nightly backup still runs
    assert r.returncode == 0, r.stderr


def _fail_first_put(monkeypatch):
    calls = []

    def put_many(self, keys, values):
        calls.append(len(keys))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LmdbDatastore, "put_many", put_many)
    return calls


def test_a_first_batch_refused_whole_leaves_no_journal(tmp_path, monkeypatch):
    """--overwrite into an existing LMDB store whose first batch the disk refuses: LMDB
    applies a batch in one transaction (atomic_put_many), so nothing was written: no
    journal."""
    uri = f"lmdb:{tmp_path / 'store'}"
    restore_archive(GOLDEN / "exclude.tar.gz", uri)
    before = store_records(uri)
    calls = _fail_first_put(monkeypatch)
    with pytest.raises(DatastoreError, match="no space left"):
        restore_archive(GOLDEN / "full.tar.gz", uri, mode="overwrite")
    assert calls and not (tmp_path / "store.dsbackup-restore.json").exists()
    monkeypatch.undo()
    assert store_records(uri) == before


def test_a_failed_write_of_a_store_without_atomic_batches_keeps_the_journal(tmp_path,
                                                                          monkeypatch):
    """A store that writes a batch record by record (flatfs) may hold part of a batch whose
    write failed: the journal stays, naming the restore to run again (docs/CLI.md)."""
    uri = f"lmdb:{tmp_path / 'store'}"
    restore_archive(GOLDEN / "exclude.tar.gz", uri)
    _fail_first_put(monkeypatch)
    monkeypatch.setattr(LmdbDatastore, "atomic_put_many", False)
    with pytest.raises(DatastoreError):
        restore_archive(GOLDEN / "full.tar.gz", uri, mode="overwrite")
    journal = tmp_path / "store.dsbackup-restore.json"
    assert json.loads(journal.read_text())["next_chunk"] == 0


def test_a_key_the_target_cannot_hold_after_records_were_written_keeps_the_journal(
        tmp_path, run_cli):
    """An archive whose later key flatfs cannot hold (/pins/x after /CIQ... blocks): the
    batches before it were committed, but the journal was removed as for a key met first, so
    the next backup of the half-restored store took it as whole, exit 0 (hostile review).
    Now the journal stays and the message says what the target holds; a key met before any
    write still leaves none (tests/cli/test_bad_inputs.py)."""
    from dsbackup.engine.backup import BackupManager
    from dsbackup.engine.config import BackupConfig
    from dsbackup.errors import InvalidKey

    src = f"sqlite:{tmp_path / 'src.db'}"
    ds = open_datastore(src)
    keys = [b"/CIQ%040d" % i for i in range(300)]
    ds.put_many(keys, [k * 50 for k in keys])
    ds.put_many([b"/pins/x"], [b"pin"])
    ds.close()
    archive = tmp_path / "a.tar.gz"
    BackupManager(BackupConfig(chunk_size=20, workers=1)).create_backup(src, archive)
    spec = f"flatfs:{tmp_path / 't'}"
    with pytest.raises(InvalidKey, match="holds part of the archive"):
        restore_archive(archive, spec, workers=2, batch_bytes=16 << 10)
    assert 0 < len(store_records(spec)) < len(keys)
    assert (tmp_path / "t.dsbackup-restore.json").exists()
    r = run_cli("backup", spec, tmp_path / "b.tar.gz")
    assert r.returncode == 2 and "did not finish" in r.stderr, r.stderr
