"""A read-only LevelDB open goes through a private snapshot: the directory is left exactly as
it was (LevelDB itself rewrites its log and manifest on every open), and a LevelDB another
process has open is refused as locked."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import plyvel
import pytest

from dsbackup.datastores import open_datastore
from dsbackup.datastores.leveldb import LevelDbDatastore
from dsbackup.errors import LockedError


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(root.iterdir()):
        st = p.lstat()
        out[p.name] = (st.st_mode, st.st_size, st.st_mtime_ns,
                       hashlib.sha256(p.read_bytes()).hexdigest())
    st = root.lstat()
    out["."] = (st.st_mode, st.st_mtime_ns)
    return out


def make_db(path: Path) -> dict[bytes, bytes]:
    data = {f"/k/{i:04d}".encode(): os.urandom(50) for i in range(300)}
    db = plyvel.DB(str(path), create_if_missing=True)
    for k, v in list(data.items())[:200]:
        db.put(k, v)
    db.close()
    db = plyvel.DB(str(path))
    db.compact_range()
    for k, v in list(data.items())[200:]:
        db.put(k, v)  # left in the write-ahead log, as a stopped daemon leaves it
    db.close()
    return data


def test_readonly_open_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "db"
    data = make_db(path)
    assert any(p.suffix == ".log" and p.stat().st_size for p in path.iterdir())
    before = snapshot(path)
    with open_datastore(f"leveldb:{path}", readonly=True) as ds:
        got = {}
        for keys, values in ds.scan_batches(b"", None):
            got.update(zip(keys, values))
        snap = ds._snapshot
        assert snap is not None and snap.is_dir() and snap.parent != path.parent
    assert got == data
    assert not snap.exists()                      # the private copy is gone
    assert snapshot(path) == before


def test_writable_open_still_writes_in_place(tmp_path: Path) -> None:
    path = tmp_path / "db"
    make_db(path)
    ds = LevelDbDatastore(path)
    assert ds._snapshot is None
    ds.put(b"/new", b"v")
    ds.close()
    with LevelDbDatastore(path, readonly=True) as ro:
        assert ro.get(b"/new") == b"v"


def test_locked_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "db"
    make_db(path)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import plyvel, sys
        db = plyvel.DB({str(path)!r})
        print("open", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        before = snapshot(path)
        with pytest.raises(LockedError, match="locked"):
            LevelDbDatastore(path, readonly=True)
        assert snapshot(path) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
