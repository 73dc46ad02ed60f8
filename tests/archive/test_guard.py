"""The path guard (issue #20 item 2): an archive never lands in a store it backs up, and a
restore target never contains its archive — for backup, restore, migrate and consolidate, with
symlinks resolved. Each refusal is exit 2 naming both paths, and nothing is touched."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from dsbackup import datasets
from dsbackup.datastores import open_datastore


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for n in sorted(filenames):
            p = Path(dirpath, n)
            if n == "lock.mdb":
                continue
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    src = tmp_path / "foot"
    datasets.write_lmdb(str(src), ((b"/r/%05d" % i, b"v%d" % i) for i in range(500)))
    return src


def test_backup_into_the_store_file_is_refused(tmp_path, run_cli, store):
    before = _tree_digest(store)
    r = run_cli("backup", f"lmdb:{store}", store / "data.mdb")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert str(store / "data.mdb") in r.stderr and str(store) in r.stderr
    assert _tree_digest(store) == before
    with open_datastore(f"lmdb:{store}", readonly=True) as ds:
        assert ds.get(b"/r/00007") == b"v7"


@pytest.mark.parametrize("where", ["inside", "nested", "symlinked-dir", "symlinked-file"])
def test_backup_inside_the_store_directory_is_refused(tmp_path, run_cli, store, where):
    if where == "inside":
        out = store / "x.tar.gz"
    elif where == "nested":
        (store / "sub").mkdir()
        out = store / "sub" / "x.tar.gz"
    elif where == "symlinked-dir":
        (tmp_path / "link").symlink_to(store)
        out = tmp_path / "link" / "x.tar.gz"
    else:  # the archive name is a symlink pointing at the store's data file
        out = tmp_path / "innocent.tar.gz"
        out.symlink_to(store / "data.mdb")
    before = _tree_digest(store)
    args = ["backup", f"lmdb:{store}", out] + (["--overwrite"] if where == "symlinked-file"
                                                 else [])
    r = run_cli(*args)
    assert r.returncode == 2, r.stderr
    assert "inside the source store" in r.stderr and str(store) in r.stderr
    assert _tree_digest(store) == before
    assert not any(n.startswith(".x.tar.gz.tmp") for n in os.listdir(store))


def test_backup_of_a_bare_path_and_of_sqlite(tmp_path, run_cli, store):
    r = run_cli("backup", str(store), store / "a.tar.gz")  # detected lmdb
    assert r.returncode == 2 and "inside the source store" in r.stderr
    db = tmp_path / "s.db"
    with open_datastore(f"sqlite:{db}") as ds:
        ds.put(b"/a", b"1")
    digest = db.read_bytes()
    for out in (db, tmp_path / "s.db-wal"):
        r = run_cli("backup", f"sqlite:{db}", out, "--overwrite")
        assert r.returncode == 2 and "inside the source store" in r.stderr, r.stderr
    assert db.read_bytes() == digest
    assert sqlite3.connect(db).execute("select count(*) from sqlite_master").fetchone()
    r = run_cli("backup", f"sqlite:{db}", tmp_path / "ok.tar.gz")  # beside it: fine
    assert r.returncode == 0, r.stderr
    ff = tmp_path / "ff"
    with open_datastore(f"flatfs:{ff}?shard=/repo/flatfs/shard/v1/next-to-last/2") as ds:
        ds.put(b"/CIQA", b"block")
    r = run_cli("backup", f"flatfs:{ff}", ff / "AA" / "x.tar.gz")
    assert r.returncode == 2 and "inside the source store" in r.stderr, r.stderr
    assert not list(ff.rglob("*.tar.gz*"))


def test_restore_target_containing_the_archive_is_refused(tmp_path, run_cli, store):
    arch_dir = tmp_path / "backups"
    arch_dir.mkdir()
    assert run_cli("backup", f"lmdb:{store}", arch_dir / "a.tar.gz").returncode == 0
    for target in (f"flatfs:{arch_dir}", f"lmdb:{arch_dir}", f"flatfs:{tmp_path}",
                   f"sqlite:{arch_dir / 'a.tar.gz'}", str(arch_dir)):
        r = run_cli("restore", arch_dir / "a.tar.gz", target)
        assert r.returncode == 2, (target, r.stderr)
        assert "contains the archive" in r.stderr and "a.tar.gz" in r.stderr, r.stderr
    assert sorted(os.listdir(arch_dir)) == ["a.tar.gz"]
    r = run_cli("restore", arch_dir / "a.tar.gz", f"lmdb:{tmp_path / 'elsewhere'}")
    assert r.returncode == 0, r.stderr


def test_restore_target_containing_a_parent_is_refused(tmp_path, run_cli, store):
    pdir = tmp_path / "parents"
    pdir.mkdir()
    assert run_cli("backup", f"lmdb:{store}", pdir / "full.tar.gz").returncode == 0
    with open_datastore(f"lmdb:{store}") as ds:
        ds.put(b"/r/00001", b"changed")
    assert run_cli("backup", f"lmdb:{store}", tmp_path / "inc.tar.gz", "--parent",
                   pdir / "full.tar.gz").returncode == 0
    r = run_cli("backup", f"lmdb:{store}", store / "inc2.tar.gz", "--parent",
                pdir / "full.tar.gz")  # an incremental is guarded too
    assert r.returncode == 2 and "inside the source store" in r.stderr
    r = run_cli("restore", tmp_path / "inc.tar.gz", f"flatfs:{pdir}", "--parent-dir", pdir)
    assert r.returncode == 2 and "contains the archive" in r.stderr
    assert "full.tar.gz" in r.stderr
    assert sorted(os.listdir(pdir)) == ["full.tar.gz"]


def test_consolidate_may_not_write_over_its_input(tmp_path, run_cli, store):
    assert run_cli("backup", f"lmdb:{store}", tmp_path / "a.tar.gz").returncode == 0
    # consolidate has no store: its output may still not replace its own input
    r = run_cli("consolidate", tmp_path / "a.tar.gz", tmp_path / "a.tar.gz", "--overwrite")
    assert r.returncode == 2 and "an archive this one is made from" in r.stderr


def test_migrate_backup_before_inside_a_store_is_refused(tmp_path, run_cli, store):
    plan = tmp_path / "copy.toml"
    plan.write_text('id = "copyx"\nversion = "1"\n\n[[steps]]\nid = "copy"\ntype = "copy"\n')
    target = tmp_path / "T"
    r = run_cli("migrate", plan, f"lmdb:{store}", f"lmdb:{target}", "--backup-before",
                "--state-dir", store / "state")
    assert r.returncode == 2, r.stderr
    assert "inside the source store" in r.stderr and str(store) in r.stderr
    assert not list(store.glob("state/*.tar.gz*"))
    assert {p.name for p in store.iterdir()} >= {"data.mdb"}
    with open_datastore(f"lmdb:{store}", readonly=True) as ds:
        assert ds.get(b"/r/00007") == b"v7"


def test_store_paths_and_checks_as_functions(tmp_path):
    from dsbackup.archive.guard import check_archive_outside, check_target_outside, store_paths
    from dsbackup.errors import PathConflictError

    d = tmp_path / "s"
    d.mkdir()
    (d / "data.mdb").write_bytes(b"")
    assert store_paths(f"lmdb:{d}") == [(d.resolve(), True)]
    assert store_paths(f"lmdb:{d / 'data.mdb'}") == [(d.resolve(), True)]
    assert store_paths("memory:") == []
    assert [p.name for p, _ in store_paths(f"sqlite:{tmp_path / 'x.db'}")] == [
        "x.db", "x.db-wal", "x.db-shm", "x.db-journal"]
    with open_datastore("memory:") as ds:
        check_archive_outside(tmp_path / "a.tar.gz", [("source", ds)])
    check_archive_outside(tmp_path / "s2" / "a.tar.gz", [("source", f"lmdb:{d}")])
    with pytest.raises(PathConflictError, match="inside the source store"):
        check_archive_outside(d / "a.tar.gz", [("source", f"lmdb:{d}")])
    with pytest.raises(PathConflictError, match="contains the archive"):
        check_target_outside(f"flatfs:{tmp_path}", [d / "a.tar.gz"])
    check_target_outside(f"flatfs:{tmp_path / 'other'}", [d / "a.tar.gz"])


def test_overwrite_of_an_archive_a_running_backup_holds_is_refused(tmp_path, run_cli, cli_env):
    """`backup --overwrite` onto the parent of an incremental being written elsewhere (a
    real backup, stopped with SIGSTOP, holding its parent): before, the parent was replaced
    and the incremental then referred to chunks no longer there; now exit 4, one line naming
    the holder's PID, the parent untouched; once the backup ends, --overwrite works."""
    import signal
    import subprocess
    import sys
    import time

    src, other = tmp_path / "s", tmp_path / "o"
    datasets.write_lmdb(str(src), datasets.iter_blocks(120))
    datasets.write_lmdb(str(other), datasets.iter_small(300, seed=4))
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    parent = a / "p.tar.gz"
    assert run_cli("backup", f"lmdb:{src}", parent, "--level", "0").returncode == 0
    before = parent.read_bytes()
    datasets.write_lmdb(str(src), datasets.iter_small(30000, seed=9))
    p = subprocess.Popen([sys.executable, "-m", "dsbackup", "backup", f"lmdb:{src}",
                          b / "c.tar.gz", "--parent", parent, "--workers", "1", "--level", "9"],
                         env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(".hold-" in n for n in os.listdir(a)):
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(p.pid, signal.SIGSTOP)
        r = run_cli("backup", f"lmdb:{other}", parent, "--overwrite")
        assert r.returncode == 4, r.stderr
        assert f"PID {p.pid}" in r.stderr and str(b / "c.tar.gz") in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert parent.read_bytes() == before
    finally:
        os.kill(p.pid, signal.SIGCONT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    # c, written, depends on it: a --parent-dir shows that (exit 2); the hold is gone
    assert run_cli("backup", f"lmdb:{other}", parent, "--overwrite", "--parent-dir",
                   b).returncode == 2
    assert [n for n in os.listdir(a) if ".hold-" in n] == []
    assert run_cli("backup", f"lmdb:{other}", parent, "--overwrite").returncode == 0
