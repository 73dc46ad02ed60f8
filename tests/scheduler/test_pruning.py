"""The scheduler's retention runs the same code path as `dsbackup prune` (issue #20 item 16):
on real archives, twins are resolved by the archive the child references, and an archive of
another name in the same directory protects its parent."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from dsbackup import datasets
from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.scheduler.job import prune_catalog
from dsbackup.scheduler.retention import RetentionPolicy
from dsbackup.scheduler.state import ArchiveEntry


def _entry(path: Path, meta, created: datetime) -> ArchiveEntry:
    return ArchiveEntry(path=str(path), created=created, fingerprint=meta.fingerprint,
                        parent=meta.parent, verified=False)


def test_schedule_retention_keeps_the_referenced_twin_and_cross_name_parents(tmp_path):
    src = tmp_path / "s"
    datasets.write_lmdb(str(src), ((b"/r/%05d" % i, b"v%d" % i) for i in range(1200)))
    d = tmp_path / "backups"
    d.mkdir()
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with_cat = BackupManager(BackupConfig(chunk_size=32, include_metadata=True))
    plain = BackupManager(BackupConfig(chunk_size=32))
    a = d / "job_20260101_000000.tar.gz"
    b = d / "job_20260102_000000.tar.gz"
    c = d / "job_20260103_000000.tar.gz"
    ma = with_cat.create_backup(f"lmdb:{src}", a)
    mb = plain.create_backup(f"lmdb:{src}", b)
    assert ma.fingerprint == mb.fingerprint  # twins
    with open_datastore(f"lmdb:{src}") as ds:
        ds.put(b"/r/00003", b"changed")
    mc = with_cat.create_backup(f"lmdb:{src}", c, parent=a)
    # a hand-made incremental of b, under another name, in the same directory
    manual = d / "manual.tar.gz"
    plain.create_backup(f"lmdb:{src}", manual, parent=b)
    archives = [_entry(a, ma, t0), _entry(b, mb, t0 + timedelta(days=1)),
                _entry(c, mc, t0 + timedelta(days=2))]

    kept, result, warnings = prune_catalog(archives, RetentionPolicy(keep_last=1),
                                           t0 + timedelta(days=3), timezone.utc)
    assert warnings == []
    why = {x.id: x for x in result.kept}
    assert set(why) == {a.name, b.name, c.name}
    assert why[a.name].rule == "parent" and c.name in why[a.name].reason
    assert why[b.name].rule == "parent" and "manual.tar.gz" in why[b.name].reason
    assert a.exists() and b.exists() and c.exists()

    manual.unlink()
    kept, result, _ = prune_catalog(archives, RetentionPolicy(keep_last=1),
                                    t0 + timedelta(days=3), timezone.utc)
    assert result.pruned_ids == {b.name}  # the newer twin, not the one c references
    assert not b.exists() and a.exists()
    assert [Path(k.path).name for k in kept] == [a.name, c.name]


def test_schedule_retention_keeps_the_parent_of_a_backup_being_written(tmp_path):
    """Another schedule's incremental in progress (here in this process, as the scheduler's
    concurrent jobs run: a live LocalSink, its lock held) protects its parent, whose
    retention would prune it; once the sink is gone, the parent is pruned."""
    from dsbackup.archive.member import member_end
    from dsbackup.storage.local import LocalSink

    src = tmp_path / "s"
    datasets.write_lmdb(str(src), ((b"/r/%05d" % i, b"v%d" % i) for i in range(1200)))
    d = tmp_path / "backups"
    d.mkdir()
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    mgr = BackupManager(BackupConfig(chunk_size=32))
    a, b = d / "job_20260101_000000.tar.gz", d / "job_20260102_000000.tar.gz"
    ma = mgr.create_backup(f"lmdb:{src}", a)
    with open_datastore(f"lmdb:{src}") as ds:
        ds.put(b"/r/00003", b"changed")
    inc = tmp_path / "inc.tar.gz"
    mgr.create_backup(f"lmdb:{src}", inc, parent=a)
    with open_datastore(f"lmdb:{src}") as ds:
        ds.put(b"/r/00004", b"changed")
    mb = mgr.create_backup(f"lmdb:{src}", b)
    archives = [_entry(a, ma, t0), _entry(b, mb, t0 + timedelta(days=1))]

    sink = LocalSink(d / "other_20260103_000000.tar.gz")
    try:
        data = inc.read_bytes()
        sink.write([data[:member_end(memoryview(data), 0)[1]]])
        kept, result, _ = prune_catalog(list(archives), RetentionPolicy(keep_last=1),
                                        t0 + timedelta(days=3), timezone.utc)
        why = {x.id: x for x in result.kept}
        assert why[a.name].rule == "in-progress"
        assert "other_20260103_000000.tar.gz" in why[a.name].reason
        assert a.exists() and result.pruned_ids == set()
    finally:
        sink.abort()
    kept, result, _ = prune_catalog(list(archives), RetentionPolicy(keep_last=1),
                                    t0 + timedelta(days=3), timezone.utc)
    assert result.pruned_ids == {a.name} and not a.exists()


def test_an_encrypted_leftover_keeps_older_archives_only_while_it_can_be_resumed(tmp_path):
    """A killed encrypted backup's temp file (its manifest sealed: the parent cannot be read)
    whose sealing state says its chunks were being written can be resumed: every archive
    created before it was last written is kept (rule resumable). One killed while writing its
    index ("finishing") cannot be resumed and keeps nothing."""
    import os

    from dsbackup.archive.crypto import KeyMaterial
    from dsbackup.storage import resumestate
    from tests.support.deadwriter import dead_writer_file

    src = tmp_path / "s"
    datasets.write_lmdb(str(src), ((b"/r/%05d" % i, b"v%d" % i) for i in range(1200)))
    d = tmp_path / "backups"
    d.mkdir()
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    mgr = BackupManager(BackupConfig(chunk_size=32))
    a, b = d / "job_20260101_000000.tar.gz", d / "job_20260102_000000.tar.gz"
    ma, mb = mgr.create_backup(f"lmdb:{src}", a), mgr.create_backup(f"lmdb:{src}", b)
    enc = tmp_path / "enc.tar.gz"
    BackupManager(BackupConfig(chunk_size=32, encryption=KeyMaterial(key=b"k" * 32))
                  ).create_backup(f"lmdb:{src}", enc)
    left = dead_writer_file(d / "other_20260103_000000.tar.gz", enc.read_bytes()[:4096],
                            sealing=resumestate.WRITING)
    archives = [_entry(a, ma, t0), _entry(b, mb, t0 + timedelta(days=1))]
    policy, now = RetentionPolicy(keep_last=1), t0 + timedelta(days=3)
    _, result, _ = prune_catalog(list(archives), policy, now, timezone.utc)
    why = {x.id: x for x in result.kept}
    assert why[a.name].rule == "resumable" and left.name in why[a.name].reason
    assert result.pruned_ids == set() and a.exists()
    os.setxattr(left, resumestate.SEALING_XATTR, resumestate.FINISHING)
    _, result, _ = prune_catalog(list(archives), policy, now, timezone.utc)
    assert result.pruned_ids == {a.name} and not a.exists()
