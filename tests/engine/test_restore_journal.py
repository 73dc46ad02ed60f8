"""dsbackup.engine.restore_journal: the journal and its syncs in a thread."""

import json
import os

import pytest

from dsbackup.engine.restore_journal import JournalSync, write_journal
from dsbackup.errors import DatastoreError


def test_a_background_sync_advances_the_journal(tmp_path):
    data = tmp_path / "data"
    data.write_bytes(b"x" * 4096)
    journal = tmp_path / "j.json"
    state = {"fingerprint": "f", "next_chunk": 0}
    write_journal(journal, state)
    fd = os.open(data, os.O_RDONLY)
    try:
        sync = JournalSync(fd, journal, state, "lmdb:/t")
        sync.start(7)
        sync.start(9)  # waits for the first
        sync.wait()
        assert not sync.busy and sync.completed == 2
    finally:
        os.close(fd)
    assert json.loads(journal.read_text()) == {"fingerprint": "f", "next_chunk": 9}
    assert state["next_chunk"] == 0  # the caller's state is not changed
    assert not journal.with_name("j.json.tmp").exists()


def test_a_failed_sync_leaves_the_journal_and_is_raised(tmp_path):
    journal = tmp_path / "j.json"
    write_journal(journal, {"next_chunk": 3})
    r, w = os.pipe()  # fdatasync of a pipe fails
    try:
        sync = JournalSync(w, journal, {"next_chunk": 3}, "lmdb:/t")
        sync.start(5)
        with pytest.raises(DatastoreError, match="lmdb:/t: sync failed"):
            sync.wait()
        sync.wait()  # raised once
    finally:
        os.close(r)
        os.close(w)
    assert json.loads(journal.read_text()) == {"next_chunk": 3}


def test_a_store_with_an_unfinished_restore_is_not_backed_up(tmp_path):
    """The journal a killed restore leaves beside its target: the store may hold part of an
    archive, so a backup of it is refused (exit 2, naming the journal) and writes nothing;
    once the restore is finished (its journal gone) the backup runs."""
    from dsbackup import datasets
    from dsbackup.engine.backup import BackupManager

    store = tmp_path / "store"
    datasets.write_lmdb(str(store), datasets.iter_small(100))
    journal = tmp_path / "store.dsbackup-restore.json"
    journal.write_text('{"next_chunk": 1}')
    arc = tmp_path / "a.tar.gz"
    with pytest.raises(DatastoreError, match="a restore into it did not finish") as err:
        BackupManager().create_backup(f"lmdb:{store}", arc)
    assert err.value.exit_code == 2 and str(journal) in str(err.value)
    assert set(tmp_path.iterdir()) == {store, journal}  # no archive, no temp file
    journal.unlink()
    BackupManager().create_backup(f"lmdb:{store}", arc)
    assert arc.exists()
