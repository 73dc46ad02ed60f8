"""dsbackup.filemodes: archives, journals and spill files are private by default (mode 0600,
like borg's umask 077) whatever the process umask; --umask changes it; the Prometheus textfile
follows the process umask (issue 20, item 15)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dsbackup import datasets, filemodes
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.restore_journal import write_journal
from dsbackup.migration.journal import Journal, write_stamp
from dsbackup.scheduler.metrics import write_textfile


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)
        filemodes.set_private_umask(filemodes.DEFAULT_PRIVATE_UMASK)


@pytest.fixture
def private_store(tmp_path):
    src = tmp_path / "s"
    datasets.write_lmdb(str(src), iter([(b"/k%d" % i, b"v") for i in range(10)]))
    src.chmod(0o700)
    return src


def test_an_archive_of_a_private_store_is_private(tmp_path, umask_022, private_store):
    BackupManager().create_backup(f"lmdb:{private_store}", tmp_path / "a.tar.gz")
    assert mode(tmp_path / "a.tar.gz") == 0o600


def test_the_private_umask_can_be_set(tmp_path, umask_022, private_store):
    filemodes.set_private_umask(0o022)
    BackupManager().create_backup(f"lmdb:{private_store}", tmp_path / "a.tar.gz")
    assert mode(tmp_path / "a.tar.gz") == 0o644
    with pytest.raises(ValueError):
        filemodes.set_private_umask(0o1000)


def test_journals_and_stamps_are_private(tmp_path, umask_022):
    write_journal(tmp_path / "t.dsbackup-restore.json", {"next_chunk": 1})
    assert mode(tmp_path / "t.dsbackup-restore.json") == 0o600
    j = Journal(tmp_path / "m" / "p.journal")
    j.open()
    j.close()
    assert mode(j.path) == 0o600
    write_stamp(tmp_path / "m" / "stamp.json", {"v": 1})
    assert mode(tmp_path / "m" / "stamp.json") == 0o600


def test_the_textfile_follows_the_process_umask(tmp_path, umask_022):
    write_textfile(tmp_path / "p" / "dsbackup.prom", "x 1\n")
    assert mode(tmp_path / "p" / "dsbackup.prom") == 0o644  # node_exporter reads it
    os.umask(0o077)
    write_textfile(tmp_path / "p" / "dsbackup.prom", "x 2\n")
    assert mode(tmp_path / "p" / "dsbackup.prom") == 0o600


def test_umask_option_on_the_command_line(tmp_path, run_cli, private_store):
    r = run_cli("backup", f"lmdb:{private_store}", tmp_path / "a.tar.gz")
    assert r.returncode == 0, r.stderr
    assert mode(tmp_path / "a.tar.gz") == 0o600
    r = run_cli("--umask", "027", "backup", f"lmdb:{private_store}", tmp_path / "b.tar.gz")
    assert r.returncode == 0, r.stderr
    assert mode(tmp_path / "b.tar.gz") == 0o640
    r = run_cli("consolidate", tmp_path / "a.tar.gz", tmp_path / "c.tar.gz", "--umask", "022")
    assert r.returncode == 0, r.stderr
    assert mode(tmp_path / "c.tar.gz") == 0o644


def test_stores_and_node_files_read_the_umask_without_setting_it(tmp_path, monkeypatch):
    """flatfs, fsds and the node files read the umask by setting it for a moment
    (os.umask(0o022) / os.umask(0)): in a program with other threads, their files created in
    that moment got the wrong mode (world-writable under 0). Now it is read from
    /proc/self/status and the process umask is never changed."""
    from dsbackup.datastores import open_datastore
    from dsbackup.engine.restore_node import write_node_files

    old = os.umask(0o027)
    try:
        calls = []
        real = os.umask
        monkeypatch.setattr(os, "umask", lambda m: calls.append(m) or real(m))
        with open_datastore(f"flatfs:{tmp_path / 'fs'}") as ds:
            ds.put(b"/KEY", b"v")
        with open_datastore(f"fsds:{tmp_path / 'ds'}") as ds:
            ds.put(b"/a/b", b"v")
        write_node_files(tmp_path / "node", [])
        assert calls == []  # old code: [18, 23, 0, 23] (0o022, back, 0, back)
        assert filemodes.process_umask() == 0o027 and real(0o027) == 0o027
    finally:
        os.umask(old)
