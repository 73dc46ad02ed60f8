"""engine/targetdir.py: a restore into lmdb:DIR / leveldb:DIR where DIR holds other files and
no such store is refused before anything is written (it put data.mdb and lock.mdb among them
and said OK)."""

from __future__ import annotations

import os

import pytest

from dsbackup import datasets
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.engine.restore import restore_archive
from dsbackup.engine.targetdir import refuse_foreign_directory
from dsbackup.errors import DatastoreError


@pytest.fixture
def archive(tmp_path):
    datasets.write_lmdb(str(tmp_path / "s"), iter([(b"/k%03d" % i, b"v") for i in range(50)]))
    BackupManager(BackupConfig(workers=1)).create_backup(f"lmdb:{tmp_path / 's'}",
                                                        tmp_path / "a.tar.gz")
    return tmp_path / "a.tar.gz"


@pytest.mark.parametrize("scheme", ["lmdb", "leveldb"])
@pytest.mark.parametrize("mode", ["empty", "overwrite", "skip_existing"])
def test_a_directory_of_other_files_is_refused(tmp_path, archive, scheme, mode):
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine\n")
    (home / "photos").mkdir()
    with pytest.raises(DatastoreError, match=r"home: directory holds other files \(notes.txt, "
                                             r"photos\) and no (LMDB|LevelDB) store"):
        restore_archive(archive, f"{scheme}:{home}", mode=mode)
    assert sorted(os.listdir(home)) == ["notes.txt", "photos"]
    assert sorted(os.listdir(tmp_path)) == ["a.tar.gz", "home", "s"]  # no lock, no journal


@pytest.mark.parametrize("scheme", ["lmdb", "leveldb"])
def test_new_empty_and_existing_stores_are_restored_into(tmp_path, archive, scheme):
    assert restore_archive(archive, f"{scheme}:{tmp_path / 'new'}").records_written == 50
    (tmp_path / "empty").mkdir()
    assert restore_archive(archive, f"{scheme}:{tmp_path / 'empty'}").records_written == 50
    r = restore_archive(archive, f"{scheme}:{tmp_path / 'new'}", mode="overwrite")
    assert r.records_written == 50


def test_other_targets_are_left_to_their_openers(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("x")
    for target in (f"flatfs:{tmp_path / 'd'}", f"sqlite:{tmp_path / 'd' / 'x'}", "memory:",
                   f"lmdb:{tmp_path / 'd' / 'x'}", f"lmdb:{tmp_path / 'missing'}", object()):
        refuse_foreign_directory(target)


def test_the_cli_says_it_in_one_line(tmp_path, archive, run_cli):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".bashrc").write_text("")
    r = run_cli("restore", archive, f"lmdb:{tmp_path / 'home'}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"dsbackup: error: {tmp_path / 'home'}: directory holds other files (.bashrc) and no "
        "LMDB store; restore into a new or empty directory, or into an existing store"]
    assert os.listdir(tmp_path / "home") == [".bashrc"]


def test_a_migration_into_a_directory_of_other_files_is_refused(tmp_path, run_cli):
    src = tmp_path / "s"
    datasets.write_lmdb(str(src), iter([(b"/k%03d" % i, b"v") for i in range(20)]))
    plan = tmp_path / "plan.toml"
    plan.write_text('id = "c"\nversion = "1"\n[[steps]]\nid = "copy"\ntype = "copy"\n')
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine\n")
    r = run_cli("migrate", plan, f"lmdb:{src}", f"lmdb:{tmp_path / 'home'}")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"dsbackup: error: {tmp_path / 'home'}: directory holds other files (notes.txt) and no "
        "LMDB store; migrate into a new or empty directory, or into an existing store"]
    assert os.listdir(tmp_path / "home") == ["notes.txt"]
    assert not (tmp_path / "home.dsmigrate").exists()
    # its own --state-dir inside the new target is not "other files"
    (tmp_path / "t" / "st").mkdir(parents=True)
    r = run_cli("migrate", plan, f"lmdb:{src}", f"lmdb:{tmp_path / 't'}", "--state-dir",
                tmp_path / "t" / "st")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("scheme", ["lmdb", "leveldb"])
def test_a_fresh_filesystems_mount_point_is_an_empty_directory(tmp_path, archive, scheme):
    """A newly made ext2/3/4 filesystem holds only lost+found: restoring onto its mount point
    was refused as 'holds other files (lost+found)'."""
    mnt = tmp_path / "mnt"
    (mnt / "lost+found").mkdir(parents=True)
    assert restore_archive(archive, f"{scheme}:{mnt}").records_written == 50
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "lost+found").write_text("a file of that name is someone's\n")
    with pytest.raises(DatastoreError, match=r"holds other files \(lost\+found\)"):
        restore_archive(archive, f"{scheme}:{tmp_path / 'other'}")


def test_an_fsds_restore_into_a_directory_of_other_files_is_refused(tmp_path, archive,
                                                                    run_cli):
    """``restore A fsds:~``: the records went in as k000.data files among a home directory's
    files, exit 0 (LMDB and LevelDB were refused already)."""
    home = tmp_path / "home"
    (home / ".cache").mkdir(parents=True)
    (home / ".bashrc").write_text("")
    (home / "notes.txt").write_text("mine\n")
    for mode in ("empty", "overwrite"):
        with pytest.raises(DatastoreError, match=r"home: directory holds other files "
                                                 r"\(.bashrc, notes.txt\) and no fsds record"):
            restore_archive(archive, f"fsds:{home}", mode=mode)
    r = run_cli("restore", archive, f"fsds:{home}", "--overwrite")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert sorted(os.listdir(home)) == [".bashrc", ".cache", "notes.txt"]
    # a store with a stray file, a store of namespaces only, an empty or new directory: fine
    store = tmp_path / "store"
    (store / "pins").mkdir(parents=True)
    (store / "pins" / "x.data").write_bytes(b"v")
    (store / "README").write_text("mine\n")
    (tmp_path / "empty").mkdir()
    for d in (store, tmp_path / "empty", tmp_path / "new"):
        restore_archive(archive, f"fsds:{d}", mode="overwrite")
        assert (d / "k000.data").read_bytes() == b"v"
    assert (store / "README").read_text() == "mine\n"


@pytest.mark.parametrize("scheme", ["lmdb", "fsds", "leveldb", "flatfs", "kubo"])
def test_a_dangling_symlink_target_is_named(tmp_path, archive, run_cli, scheme):
    """A target that is a symlink to a missing directory: 'PATH: File exists' (mkdir's
    error) or a LevelDB 'NotFound: .../LOCK'; now one line saying what it is."""
    link = tmp_path / "t"
    link.symlink_to(tmp_path / "gone")
    r = run_cli("restore", archive, f"{scheme}:{link}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"dsbackup: error: {link}: a symlink to {tmp_path / 'gone'}, which does not exist; "
        "create that directory, or restore into another path"]
    assert sorted(os.listdir(tmp_path)) == ["a.tar.gz", "s", "t"]


def test_a_sqlite_target_that_is_a_directory_is_named(tmp_path, archive, run_cli):
    (tmp_path / "d").mkdir()
    r = run_cli("restore", archive, f"sqlite:{tmp_path / 'd'}")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"dsbackup: error: {tmp_path / 'd'}: a directory, not an SQLite database file"]
    assert os.listdir(tmp_path / "d") == []
