"""LevelDbDatastore's errors: a lock held by another process is LockedError (exit 4); a file
where the store's directory belongs is not (it named a LOCK file and was taken for one)."""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from dsbackup.datastores.leveldb import LevelDbDatastore
from dsbackup.errors import LockedError


def test_a_file_in_place_of_the_store_is_no_lock(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(Exception) as info:
        LevelDbDatastore(f)
    assert not isinstance(info.value, LockedError)
    assert str(info.value) == f"{f}: not a directory (LevelDB is a directory)"


def test_a_store_open_in_another_process_is_locked(tmp_path):
    path = tmp_path / "db"
    LevelDbDatastore(path).close()
    holder = subprocess.Popen([sys.executable, "-c", "import plyvel, sys; db = plyvel.DB("
                               f"{str(path)!r}); print('open', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(LockedError, match="Resource temporarily unavailable"):
            LevelDbDatastore(path)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


GOLEVELDB_DIGEST = "901 177579103009ea7a38a5f8d1bab53f4b96fc3e50e4937d1e070321c19fbcc8c7"


def _digest(pairs) -> str:
    """What tests/fixtures/goleveldb-kubo/ldbtool.go's `read` prints."""
    h, n = hashlib.sha256(), 0
    for k, v in pairs:
        for b in (k, v):
            h.update(struct.pack(">Q", len(b)))
            h.update(b)
        n += 1
    return f"{n} {h.hexdigest()}"


def test_goleveldb_tables_and_journals_read_exactly_and_change_nothing(tmp_path):
    """A LevelDB written by goleveldb (Kubo's levelds: go-ds-leveldb over syndtr/goleveldb,
    compression none; tests/fixtures/goleveldb-kubo, its README), with two ``.ldb`` tables
    (goleveldb's table extension) and two ``.log`` journals (a frozen and a live memtable):
    a read-only open reads exactly what goleveldb reads and leaves every file as it was."""
    src = Path(__file__).parents[1] / "fixtures" / "goleveldb-kubo" / "db"
    db = tmp_path / "db"
    shutil.copytree(src, db)
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
              for p in db.iterdir()}
    assert sorted(p for p in before if p.endswith((".ldb", ".log"))) == [
        "000003.ldb", "000004.log", "000005.ldb", "000006.log"]
    with LevelDbDatastore(db, readonly=True) as ds:
        assert _digest(zip(*_flatten(ds.scan_batches()))) == GOLEVELDB_DIGEST
        assert ds.get(b"/pins/state/dirty") == b""
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in db.iterdir()} == before


def _flatten(batches) -> tuple[list[bytes], list[bytes]]:
    keys: list[bytes] = []
    values: list[bytes] = []
    for ks, vs in batches:
        keys += ks
        values += vs
    return keys, values


_GOLEVELDB_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)  # what goleveldb (Kubo's levelds) holds on LOCK
print("open", flush=True)
sys.stdin.read()
"""

_GOLEVELDB_OPENS = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    print("locked")
else:
    print("opened")
"""


def test_a_store_goleveldb_has_open_is_not_written(tmp_path):
    """goleveldb locks LOCK with flock, LevelDB's C++ library (plyvel) with a POSIX lock; the
    two do not see each other, so a restore --overwrite into a LevelDB a Kubo daemon had open
    wrote beside the daemon (the snapshot of a read-only open already took both kinds)."""
    from dsbackup import BackupManager

    path = tmp_path / "db"
    shutil.copytree(Path(__file__).parents[1] / "fixtures" / "goleveldb-kubo" / "db", path)
    with LevelDbDatastore(path) as ds:
        ds.put(b"/mine", b"1")
    arc = tmp_path / "a.tar.gz"
    BackupManager().create_backup(f"leveldb:{path}", str(arc))
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    holder = subprocess.Popen([sys.executable, "-c", _GOLEVELDB_HOLDER, str(path / "LOCK")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(LockedError, match="locked by another process") as exc:
            LevelDbDatastore(path)
        assert exc.value.exit_code == 4
        with pytest.raises(LockedError):
            BackupManager().restore_backup(str(arc), f"leveldb:{path}", mode="overwrite")
        assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    with LevelDbDatastore(path) as ds:  # and while we write it, goleveldb cannot open it
        assert subprocess.run([sys.executable, "-c", _GOLEVELDB_OPENS, str(path / "LOCK")],
                              capture_output=True, text=True).stdout.strip() == "locked"
        ds.put(b"/mine", b"2")
    assert subprocess.run([sys.executable, "-c", _GOLEVELDB_OPENS, str(path / "LOCK")],
                          capture_output=True, text=True).stdout.strip() == "opened"
