"""A failed restore into a store it created leaves the target as it was
(dsbackup/engine/newtarget.py): missing, or an empty directory, when it left no records."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsbackup.datastores import open_datastore

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"


@pytest.fixture
def archives(tmp_path, run_cli):
    """(Go-format, dsbackup) archives of a store whose keys flatfs cannot hold."""
    src = f"sqlite:{tmp_path / 'src.db'}"
    ds = open_datastore(src)
    ds.put_many([b"/local/x", b"/pins/abc"], [b"1", b"2"])
    ds.close()
    go, ours = tmp_path / "go.tar.gz", tmp_path / "ours.tar.gz"
    assert run_cli("backup", src, go, "--format", "go").returncode == 0
    assert run_cli("backup", src, ours).returncode == 0
    return go, ours


@pytest.mark.parametrize("which", [0, 1], ids=["go-format", "dsbackup-format"])
def test_a_restore_into_flatfs_of_keys_it_cannot_hold_leaves_no_store(tmp_path, run_cli,
                                                                      archives, which):
    """It failed at the first key and left an empty flatfs (SHARDING, _README) behind."""
    out = tmp_path / "out"
    out.mkdir()
    for target in (out / "new", out / "a" / "b" / "new"):
        r = run_cli("restore", archives[which], f"flatfs:{target}")
        assert r.returncode == 2 and "not valid for flatfs" in r.stderr, r.stderr
        assert list(out.iterdir()) == [], list(out.rglob("*"))  # parents made for it too
    empty = out / "empty"
    empty.mkdir()
    r = run_cli("restore", archives[which], f"flatfs:{empty}")
    assert r.returncode == 2, r.stderr
    assert list(out.iterdir()) == [empty] and list(empty.iterdir()) == []


def test_a_damaged_first_chunk_into_a_new_store_leaves_none(tmp_path, run_cli):
    from dsbackup.archive.reader import ArchiveReader

    with ArchiveReader(GOLDEN / "full.tar.gz") as rd:
        e = rd.entry(0)
    data = bytearray((GOLDEN / "full.tar.gz").read_bytes())
    data[e.offset + e.length // 2] ^= 0x10  # found when chunk 0 is read, after the opening
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(bytes(data))
    for scheme in ("lmdb", "sqlite"):
        r = run_cli("restore", bad, f"{scheme}:{tmp_path / 'new' / scheme}")
        assert r.returncode == 3, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar.gz"]


def test_a_restore_that_wrote_records_keeps_them_and_its_journal(tmp_path):
    """The journal says the store holds part of the archive: a rerun finishes it (or the
    message says what it holds); nothing is removed."""
    src = f"sqlite:{tmp_path / 'src.db'}"
    ds = open_datastore(src)
    keys = [b"/CIQ%040d" % i for i in range(300)]
    ds.put_many(keys, [k * 50 for k in keys])
    ds.put_many([b"/pins/x"], [b"pin"])
    ds.close()
    from dsbackup.engine.backup import BackupManager
    from dsbackup.engine.config import BackupConfig
    from dsbackup.engine.restore import restore_archive
    from dsbackup.errors import InvalidKey

    BackupManager(BackupConfig(chunk_size=20, workers=1)).create_backup(src, tmp_path / "a.tgz")
    with pytest.raises(InvalidKey, match="holds part of the archive"):
        restore_archive(tmp_path / "a.tgz", f"flatfs:{tmp_path / 't'}", workers=2,
                        batch_bytes=16 << 10)
    assert (tmp_path / "t" / "SHARDING").exists()
    assert (tmp_path / "t.dsbackup-restore.json").exists()


@pytest.mark.parametrize("which", [0, 1], ids=["go-format", "dsbackup-format"])
def test_a_store_made_by_another_writer_before_the_lock_is_not_removed(tmp_path, archives,
                                                                       monkeypatch, which):
    """The target was missing when the restore began, but another writer (a restore that
    finished, an `ipfs init`) made it before this one took the lock: the refusal that
    follows (the target is not empty) must not remove that store."""
    from dsbackup.engine import restore as restore_mod
    from dsbackup.engine import targetlock
    from dsbackup.errors import DsBackupError

    target = f"sqlite:{tmp_path / 'theirs.db'}"

    def other_writer() -> None:
        ds = open_datastore(target)
        ds.put_many([b"/theirs"], [b"precious"])
        ds.close()

    real_acquire = targetlock.TargetLock.acquire

    def acquire(self, *a, **kw):
        if not (tmp_path / "theirs.db").exists():
            other_writer()
        return real_acquire(self, *a, **kw)

    real_enter = targetlock.TargetLock.__enter__

    def enter(self):
        if not (tmp_path / "theirs.db").exists():
            other_writer()
        return real_enter(self)

    monkeypatch.setattr(targetlock.TargetLock, "acquire", acquire)
    monkeypatch.setattr(targetlock.TargetLock, "__enter__", enter)
    with pytest.raises(DsBackupError):
        restore_mod.restore_archive(archives[which], target)
    ds = open_datastore(target)
    try:
        assert ds.get(b"/theirs") == b"precious"
    finally:
        ds.close()
