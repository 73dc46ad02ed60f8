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


def _pending_current_db(tmp_path: Path) -> tuple[Path, dict[bytes, bytes], dict[bytes, bytes]]:
    """A directory as goleveldb leaves it when stopped between writing ``CURRENT.<N>`` (the
    new manifest's name) and renaming it over ``CURRENT`` (storage/file_storage.go
    SetMeta): ``CURRENT`` still names the older manifest. Built from a LevelDB at two
    moments (file numbers are never reused, so the two sets of files merge): `old` is what
    the older manifest holds, `new` what the newer one holds."""
    import shutil

    path = tmp_path / "db"
    data = {f"/k/{i:04d}".encode(): os.urandom(50) for i in range(300)}
    db = plyvel.DB(str(path), create_if_missing=True)
    for k, v in list(data.items())[:100]:
        db.put(k, v)
    db.close()
    first = tmp_path / "first"
    shutil.copytree(path, first)
    db = plyvel.DB(str(path))
    for k, v in list(data.items())[100:]:
        db.put(k, v)
    db.compact_range()
    db.close()
    db = plyvel.DB(str(path))  # a new manifest again, the log replayed into tables
    db.close()
    new_current = (path / "CURRENT").read_bytes()
    old_current = (first / "CURRENT").read_bytes()
    assert new_current != old_current
    for p in first.iterdir():
        if not (path / p.name).exists():
            shutil.copy2(p, path / p.name)
    n = int(new_current.strip().split(b"-")[1])
    (path / f"CURRENT.{n}").write_bytes(new_current)
    (path / "CURRENT").write_bytes(old_current)
    return path, dict(list(data.items())[:100]), data


def _read(uri: str) -> dict[bytes, bytes]:
    with open_datastore(uri, readonly=True) as ds:
        return {k: v for keys, values in ds.scan_batches(b"", None)
                for k, v in zip(keys, values)}


def test_goleveldb_pending_current_is_read_as_goleveldb_would(tmp_path: Path) -> None:
    """goleveldb's pending ``CURRENT.<N>`` (a stopped Kubo): its next open takes the newest
    valid CURRENT* and renames it into place; the snapshot read the older ``CURRENT``
    (here: 100 of 300 records) and, with ``CURRENT`` itself missing, refused the store.
    Now the copy settles it as goleveldb would; the original stays as it was."""
    path, old, new = _pending_current_db(tmp_path)
    before = snapshot(path)
    assert _read(f"leveldb:{path}") == new
    assert snapshot(path) == before
    (path / "CURRENT").unlink()  # stopped before its first CURRENT existed
    assert _read(f"leveldb:{path}") == new
    n = next(p for p in path.iterdir() if p.name.startswith("CURRENT."))
    n.write_bytes(b"MANIFEST-99999\n")  # names no manifest: not valid, nothing to open
    from dsbackup.errors import DatastoreError

    with pytest.raises(DatastoreError, match=f"{path}: no LevelDB database .*CURRENT"):
        _read(f"leveldb:{path}")


def test_effective_current_follows_goleveldb_rules() -> None:
    from dsbackup.datastores.leveldb_snapshot import effective_current

    files = {"CURRENT": b"MANIFEST-000005\n", "CURRENT.9": b"MANIFEST-000009\n",
             "CURRENT.12": b"MANIFEST-00001", "CURRENT.x": b"MANIFEST-000011\n",
             "MANIFEST-000005": b"", "MANIFEST-000009": b"", "MANIFEST-000011": b""}
    names = list(files)
    assert effective_current(names, files.__getitem__) == "CURRENT.9"  # 12: torn; x: no N
    files["CURRENT.9"] = b"MANIFEST-000005\n"
    assert effective_current(names, files.__getitem__) == "CURRENT"  # a tie: CURRENT
    names.remove("MANIFEST-000005")
    assert effective_current(names, files.__getitem__) is None


_TRY_OPEN = textwrap.dedent("""
    import plyvel, sys
    try:
        plyvel.DB(sys.argv[1])
    except plyvel.IOError:
        print("locked")
    else:
        print("opened")
""")


def _other_process_opens(path: Path) -> str:
    return subprocess.run([sys.executable, "-c", _TRY_OPEN, str(path)], capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.mark.parametrize("how", ["plyvel", "dsbackup"])
def test_leveldb_open_in_this_process_is_refused_and_keeps_its_lock(tmp_path: Path,
                                                                    how: str) -> None:
    """A program that has its LevelDB open (plyvel, or a writable leveldb: store) and backs it
    up through the API: the snapshot's probe opened and closed LOCK, and closing any
    descriptor of a file drops the process's POSIX locks on it, LevelDB's own included, so
    another process (a Kubo daemon starting) could then open the store beside its writer."""
    from dsbackup import BackupManager

    path = tmp_path / "db"
    make_db(path)
    db = plyvel.DB(str(path)) if how == "plyvel" else open_datastore(f"leveldb:{path}")
    try:
        assert _other_process_opens(path) == "locked"
        with pytest.raises(LockedError, match="open in this process") as exc:
            LevelDbDatastore(path, readonly=True)
        assert exc.value.exit_code == 4
        with pytest.raises(LockedError, match="open in this process"):
            BackupManager().create_backup(f"leveldb:{path}", str(tmp_path / "a.tar.gz"))
        assert not (tmp_path / "a.tar.gz").exists()
        assert _other_process_opens(path) == "locked"  # old code: "opened"
    finally:
        db.close()
    with LevelDbDatastore(path, readonly=True) as ds:  # closed: readable again
        assert ds.get(b"/k/0000")


def test_two_snapshots_at_once_share_one_lock(tmp_path: Path) -> None:
    """Two readers of one LevelDB in one process (two threads backing it up): the lock is
    held once for the process, so one reader closing does not drop the other's."""
    path = tmp_path / "db"
    make_db(path)
    from dsbackup.datastores import leveldb_snapshot, sharedlock

    a = leveldb_snapshot._lock_shared(path)  # two copies under way at once
    b = leveldb_snapshot._lock_shared(path)
    assert a is not None and b is not None
    a.release()
    assert _other_process_opens(path) == "locked"  # old code: "opened" (lock dropped)
    b.release()
    assert not sharedlock._held
    assert _other_process_opens(path) == "opened"
