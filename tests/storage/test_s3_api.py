"""The Python API with s3:// locations: consolidate from and to a bucket, migration's
backup_before into a bucket, the quick check before an upload completes, and the storage
interface itself (ranged reads, list, delete, write-once)."""

from __future__ import annotations

import pytest
from lmdb_files import read_all

from dsbackup import (
    BackupConfig,
    BackupManager,
    MigrationConfig,
    MigrationManager,
    MigrationPlan,
    MigrationStep,
    datasets,
)
from dsbackup.archive.consolidate import consolidate_archive
from dsbackup.errors import ArchiveExistsError, ArchiveUnavailable, IntegrityError
from dsbackup.storage import S3Location, as_location, delete, exists, list_archives, open_sink
from dsbackup.storage.s3 import S3Source


def test_consolidate_reads_and_writes_the_bucket(s3, tmp_path):
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(2000))
    mgr = BackupManager(BackupConfig(include_metadata=True, workers=1))
    mgr.create_backup(f"lmdb:{src}", s3.url("c/full.dsb"))
    datasets.write_lmdb(str(src), datasets.iter_small(100, seed=4))
    mgr.create_backup(f"lmdb:{src}", s3.url("c/inc.dsb"), parent=s3.url("c/full.dsb"))
    consolidate_archive(s3.url("c/inc.dsb"), s3.url("c/cons.dsb"))
    meta = mgr.inspect(s3.url("c/cons.dsb"))
    assert meta.parent is None
    mgr.restore_backup(s3.url("c/cons.dsb"), f"lmdb:{tmp_path / 'dst'}")
    assert read_all(tmp_path / "dst") == read_all(src)
    with pytest.raises(ArchiveExistsError):
        consolidate_archive(s3.url("c/inc.dsb"), s3.url("c/cons.dsb"))


def test_migration_backup_before_goes_to_the_bucket(s3, tmp_path):
    src, dst = f"lmdb:{tmp_path}/src", f"lmdb:{tmp_path}/dst"
    datasets.write_lmdb(f"{tmp_path}/src", datasets.iter_small(300))
    plan = MigrationPlan(id="p", version="1", steps=[MigrationStep(id="copy", type="copy",
                                                                   source="source",
                                                                   target="target")])
    res = MigrationManager(MigrationConfig(backup_before=True,
                                           backup_dir=s3.url("pre/"))).execute_migration(
        plan, src, dst)
    assert res.success, res.error_log
    assert res.backup_path.startswith(s3.url("pre/p-1-pre-"))
    assert BackupManager().verify_backup(res.backup_path).ok


def test_storage_interface_on_the_server(s3):
    loc = as_location(s3.url("i/x.bin"))
    sink = open_sink(loc)
    blob = bytes(range(256)) * 40000  # ~10 MB: two parts of 8 MiB
    sink.write([blob[:5_000_000]])
    sink.write([memoryview(blob)[5_000_000:]])
    assert not exists(loc) and s3.uploads() == ["i/x.bin"]  # nothing visible before commit
    sink.commit()
    assert exists(loc) and s3.uploads() == []
    src = S3Source(loc)
    assert src.size == len(blob)
    for off, n in ((0, 10), (4_194_300, 10), (len(blob) - 5, 5), (123, 9_000_000)):
        assert src.read(off, n) == blob[off:off + n]
    with pytest.raises(IntegrityError):
        src.read(len(blob) - 2, 5)
    src.close()
    with pytest.raises(ArchiveExistsError):
        open_sink(loc)
    aborted = open_sink(as_location(s3.url("i/y.bin")))
    aborted.write([blob])
    aborted.abort()
    assert s3.uploads() == [] and not exists(as_location(s3.url("i/y.bin")))
    assert list_archives(S3Location(s3.bucket, "i/")) == [loc]
    delete(loc)
    with pytest.raises(ArchiveUnavailable, match="no such archive"):
        S3Source(loc)


def test_encrypted_backup_and_incremental_in_the_bucket(s3, tmp_path):
    from dsbackup.archive.crypto import KeyMaterial

    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(1500))
    mgr = BackupManager(BackupConfig(workers=2, include_metadata=True,
                                     encryption=KeyMaterial(passphrase=b"correct horse")))
    mgr.create_backup(f"lmdb:{src}", s3.url("e/full.dsb"))  # the quick check needs the key
    datasets.write_lmdb(str(src), datasets.iter_small(80, seed=7))
    mgr.create_backup(f"lmdb:{src}", s3.url("e/inc.dsb"), parent=s3.url("e/full.dsb"))
    assert mgr.verify_backup(s3.url("e/inc.dsb")).ok
    mgr.restore_backup(s3.url("e/inc.dsb"), f"lmdb:{tmp_path / 'dst'}")
    assert read_all(tmp_path / "dst") == read_all(src)
    assert b"correct horse" not in s3.get("e/full.dsb")


def test_parent_dir_may_be_a_prefix_and_chains_may_mix_local_and_s3(s3, tmp_path):
    from dsbackup.errors import MissingParentError

    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(1500))
    mgr = BackupManager(BackupConfig(workers=1))
    local_full = tmp_path / "full.dsb"
    mgr.create_backup(f"lmdb:{src}", local_full)  # a local parent of an S3 incremental
    datasets.write_lmdb(str(src), datasets.iter_small(60, seed=8))
    mgr.create_backup(f"lmdb:{src}", s3.url("kids/inc.dsb"), parent=local_full)
    report = mgr.verify_backup(s3.url("kids/inc.dsb"))  # looked for under kids/ only
    assert not report.ok and "full.dsb" in report.errors[0] and "is missing" in report.errors[0]
    with pytest.raises(MissingParentError, match="full.dsb"):
        mgr.restore_backup(s3.url("kids/inc.dsb"), f"lmdb:{tmp_path / 'dst'}")
    assert mgr.verify_backup(s3.url("kids/inc.dsb"), parent_dirs=[tmp_path]).ok
    # the parent moved into another prefix: found there with --parent-dir s3://.../
    s3.client.upload_file(str(local_full), s3.bucket, "elsewhere/full.dsb")
    report = mgr.verify_backup(s3.url("kids/inc.dsb"), parent_dirs=[s3.url("elsewhere/")])
    assert report.ok and report.parents == [s3.url("elsewhere/full.dsb")]
