"""dsbackup.datastores.sqlite: reading a store on a read-only filesystem (a snapshot)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess

import pytest

from dsbackup.datastores import open_datastore
from dsbackup.errors import DatastoreError


@pytest.fixture
def read_only_view(tmp_path):
    """A function mounting a directory read-only (a bind mount: root only) at a new path."""
    mounted = []

    def view(src):
        dst = tmp_path / f"ro-{len(mounted)}"
        dst.mkdir()
        r = subprocess.run(["mount", "-o", "bind,ro", str(src), str(dst)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot bind-mount read-only here: {r.stderr.strip()}")
        mounted.append(dst)
        return dst

    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("bind-mounts a directory read-only (root)")
    yield view
    for d in mounted:
        if subprocess.run(["umount", str(d)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(d)], check=False)  # (busy: detach it)


def _wal_db(path, rows: int, *, keep_wal: bool = False) -> sqlite3.Connection | None:
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE datastore (key BLOB PRIMARY KEY, value BLOB NOT NULL) "
                 "WITHOUT ROWID")
    conn.executemany("INSERT INTO datastore VALUES (?, ?)",
                     [(b"/k/%03d" % i, b"v%d" % i) for i in range(rows)])
    if keep_wal:
        return conn  # its -wal and -shm files stay while it is open
    conn.close()  # the last connection: the WAL checkpointed, -wal and -shm removed
    return None


def test_a_wal_database_on_a_read_only_filesystem_is_read(tmp_path, read_only_view):
    """A WAL database on a read-only filesystem (an LVM or ZFS snapshot mounted read-only)
    without its -shm file: SQLite cannot make one and refused mode=ro, and the backup
    failed, "not a dsbackup SQLite datastore: unable to open database file". With no -wal
    either the file holds every row and cannot change: it is opened immutable."""
    d = tmp_path / "d"
    d.mkdir()
    _wal_db(d / "s.db", 50)
    assert sorted(os.listdir(d)) == ["s.db"]
    ro = read_only_view(d)
    with open_datastore(f"sqlite:{ro / 's.db'}", readonly=True) as ds:
        assert sum(len(k) for k, _ in ds.scan_key_sizes()) == 50
        ds.pin_snapshot()  # (a backup's: one read transaction)
        assert [v for _, vs in ds.scan_batches() for v in vs][-1] == b"v49"
    with open_datastore(str(ro / "s.db"), readonly=True) as ds:  # detected by its header
        assert ds.scheme == "sqlite"


def test_a_wal_it_cannot_read_there_is_refused_not_skipped(tmp_path, read_only_view):
    """With a -wal file but no -shm an immutable open would not read the WAL, and the rows
    committed there would be missing from the archive: refused, naming what to do."""
    d, live = tmp_path / "d", tmp_path / "live"
    d.mkdir()
    live.mkdir()
    conn = _wal_db(live / "s.db", 50, keep_wal=True)
    try:
        shutil.copy(live / "s.db", d / "s.db")
        shutil.copy(live / "s.db-wal", d / "s.db-wal")
    finally:
        conn.close()
    ro = read_only_view(d)
    with pytest.raises(DatastoreError, match=r"on a read-only filesystem with its WAL "
                       r"\(s\.db-wal, \d+ bytes\) but no s\.db-shm"):
        open_datastore(f"sqlite:{ro / 's.db'}", readonly=True)
