"""Overlapping stores (nestlock.py): a backup and a writer of the same directory or of one
inside the other — a kubo:/helia: repo and its blocks or datastore, a sqlite: file — exclude
each other in both orders (exit 4, one line naming the other's PID), with real processes held
mid-way; stores side by side do not. Before, the backup of ``flatfs:REPO/blocks`` while a
restore wrote ``kubo:REPO`` archived a half-written store and said OK."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helia_repo import make_blocks, make_helia_repo
from paused import backing_up, finish, restoring

from dsbackup.datastores import open_datastore
from dsbackup.engine.targetlock import TargetLock, lock_path
from dsbackup.errors import LockedError


def _kubo(dst: Path, go_fixtures: Path, blocks: int = 600) -> Path:
    """A Kubo repo (the fixture's config files) holding `blocks` blocks and some records."""
    dst.mkdir(parents=True)
    for name in ("config", "datastore_spec", "version"):
        shutil.copy(go_fixtures / "kubo-v16-repo" / name, dst / name)
    bl = make_blocks(blocks)
    with open_datastore(f"kubo:{dst}") as ds:
        ds.put_many([b"/blocks/" + k.encode() for k in bl], list(bl.values()))
        ds.put_many([b"/local/r%04d" % i for i in range(300)], [os.urandom(64)] * 300)
    return dst


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _refused(r, *parts: str) -> str:
    assert r.returncode == 4, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for part in parts:
        assert part in lines[0], lines
    return lines[0]


@pytest.fixture
def repo(tmp_path, go_fixtures) -> Path:
    return _kubo(tmp_path / "repo", go_fixtures)


@pytest.fixture
def arch(tmp_path, repo, run_cli) -> Path:
    """An archive of the repo in small chunks (a restore of it pauses mid-way)."""
    a = tmp_path / "kubo.tar.gz"
    r = run_cli("backup", f"kubo:{repo}", a, "--chunk-size", "16")
    assert r.returncode == 0, r.stderr
    return a


@pytest.mark.parametrize("sub", ["flatfs:{repo}/blocks", "leveldb:{repo}/datastore"])
def test_restore_into_a_repo_whose_substore_is_being_backed_up(tmp_path, repo, arch, run_cli,
                                                               cli_env, sub):
    uri = sub.format(repo=repo)
    (repo / "version").write_text("11")  # (for the in-place migration below)
    before = _tree(tmp_path)
    backup = backing_up(cli_env, uri, str(tmp_path / "b.tar.gz"))
    try:
        r = run_cli("restore", arch, f"kubo:{repo}", "--overwrite")
        _refused(r, f"{repo}: a dsbackup backup (PID {backup.pid}) is reading it")
        r = run_cli("migrate", "--kubo", "11-to-12", repo)  # a migration in place: the same
        _refused(r, f"(PID {backup.pid}) is reading it")
        # nothing was created in or beside the store (the backup's temp file aside)
        assert [p for p in _tree(tmp_path) if not p.startswith(".b.tar")] == before
    finally:
        assert finish(backup) == 0
    assert run_cli("restore", arch, f"kubo:{repo}", "--overwrite").returncode == 0


@pytest.mark.parametrize("new", [True, False], ids=["new-repo", "existing-repo"])
def test_backup_of_a_substore_while_its_repo_is_restored(tmp_path, go_fixtures, arch,
                                                          run_cli, cli_env, new):
    target = tmp_path / "target"
    if not new:
        _kubo(target, go_fixtures, blocks=10)
    restore = restoring(cli_env, str(arch), f"kubo:{target}", overwrite=not new)
    try:
        for uri in (f"flatfs:{target}/blocks", f"leveldb:{target}/datastore"):
            r = run_cli("backup", uri, tmp_path / "b.tar.gz")
            _refused(r, f"PID {restore.pid}", f"is writing to {target}, which holds it")
            assert not (tmp_path / "b.tar.gz").exists()
    finally:
        assert finish(restore) == 0
    assert run_cli("backup", f"flatfs:{target}/blocks", tmp_path / "b.tar.gz").returncode == 0


def test_restore_into_a_substore_of_a_repo_being_backed_up(tmp_path, repo, run_cli, cli_env):
    blocks = tmp_path / "blocks.tar.gz"
    assert run_cli("backup", f"flatfs:{repo}/blocks", blocks).returncode == 0
    before = _tree(repo)
    backup = backing_up(cli_env, f"kubo:{repo}", str(tmp_path / "b.tar.gz"))
    try:
        r = run_cli("restore", blocks, f"flatfs:{repo}/blocks", "--overwrite")
        _refused(r, f"a dsbackup backup (PID {backup.pid}) is reading it")
        r = run_cli("restore", blocks, f"leveldb:{repo}/datastore", "--overwrite")
        _refused(r, f"a dsbackup backup (PID {backup.pid}) is reading it (as part of {repo})")
        assert _tree(repo) == before
        # a second backup, of the repo or of a part of it, runs beside it
        assert run_cli("backup", f"flatfs:{repo}/blocks", tmp_path / "c.tar.gz").returncode == 0
        assert run_cli("backup", f"kubo:{repo}", tmp_path / "d.tar.gz").returncode == 0
    finally:
        assert finish(backup) == 0


def test_backup_of_a_repo_while_a_substore_is_restored(tmp_path, repo, run_cli, cli_env):
    blocks = tmp_path / "blocks.tar.gz"
    r = run_cli("backup", f"flatfs:{repo}/blocks", blocks, "--chunk-size", "16")
    assert r.returncode == 0, r.stderr
    restore = restoring(cli_env, str(blocks), f"flatfs:{repo}/blocks", overwrite=True)
    try:
        r = run_cli("backup", f"kubo:{repo}", tmp_path / "b.tar.gz")
        _refused(r, f"{repo}: another dsbackup process (PID {restore.pid}) is writing to a "
                    "store inside it")
        assert not (tmp_path / "b.tar.gz").exists()
    finally:
        assert finish(restore) == 0
    assert run_cli("backup", f"kubo:{repo}", tmp_path / "b.tar.gz").returncode == 0


def test_helia_repo_and_its_datastore(tmp_path, run_cli, cli_env):
    repo = tmp_path / "helia"
    make_helia_repo(repo, blocks=400)
    part = tmp_path / "ds.tar.gz"
    assert run_cli("backup", f"fsds:{repo}/datastore", part).returncode == 0
    backup = backing_up(cli_env, f"helia:{repo}", str(tmp_path / "b.tar.gz"))
    try:
        r = run_cli("restore", part, f"fsds:{repo}/datastore", "--overwrite")
        _refused(r, f"(PID {backup.pid}) is reading it (as part of {repo})")
    finally:
        assert finish(backup) == 0


def test_sqlite_backup_and_restore_exclude_each_other(tmp_path, make_archive, run_cli,
                                                      cli_env):
    """A sqlite: store was checked, not held: a restore into it that started after the
    backup wrote into the database the backup was reading."""
    db = tmp_path / "s.db"
    uri = f"sqlite:{db}"
    with open_datastore(uri) as ds:
        keys = [b"/k%06d" % i for i in range(3000)]
        ds.put_many(keys, [os.urandom(200) for _ in keys])
    arch = tmp_path / "a.tar.gz"
    make_archive(arch, [(b"/k%06d" % i, os.urandom(300)) for i in range(20000)])
    before = db.read_bytes()
    backup = backing_up(cli_env, uri, str(tmp_path / "b.tar.gz"))
    try:
        r = run_cli("restore", arch, uri, "--overwrite")
        _refused(r, f"{db}: a dsbackup backup (PID {backup.pid}) is reading it")
        assert db.read_bytes() == before
        assert run_cli("backup", uri, tmp_path / "c.tar.gz").returncode == 0  # side by side
        # SQLite's own locking is untouched: another program still writes the database
        import sqlite3

        con = sqlite3.connect(db, timeout=30)
        con.execute("INSERT INTO datastore VALUES (?, ?)", (b"/other", b"x"))
        con.commit()
        con.close()
    finally:
        assert finish(backup) == 0
    assert not lock_path(uri).exists()
    restore = restoring(cli_env, str(arch), uri, overwrite=True)
    try:
        r = run_cli("backup", uri, tmp_path / "d.tar.gz")
        _refused(r, f"PID {restore.pid}", "is writing to it")
    finally:
        assert finish(restore) == 0
    assert run_cli("backup", uri, tmp_path / "d.tar.gz").returncode == 0


def test_stores_side_by_side_are_not_excluded(tmp_path, make_archive, run_cli, cli_env):
    a, b = f"lmdb:{tmp_path / 'a'}", f"lmdb:{tmp_path / 'b'}"
    with open_datastore(a) as ds:
        keys = [b"/k%06d" % i for i in range(3000)]
        ds.put_many(keys, [os.urandom(200) for _ in keys])
    arch = tmp_path / "x.tar.gz"
    make_archive(arch, [(b"/x%03d" % i, b"v") for i in range(50)])
    backup = backing_up(cli_env, a, str(tmp_path / "a.tar.gz"))
    try:
        assert run_cli("restore", arch, b).returncode == 0
        assert run_cli("restore", arch, f"sqlite:{tmp_path / 'c.db'}").returncode == 0
    finally:
        assert finish(backup) == 0


def test_in_one_process_nesting_both_ways(tmp_path):
    outer, inner = tmp_path / "repo", tmp_path / "repo" / "blocks"
    inner.mkdir(parents=True)
    with TargetLock(f"flatfs:{inner}", "backup", shared=True), \
            pytest.raises(LockedError, match="is reading it"):
        TargetLock(f"fsds:{outer}", "restore").acquire()
    with TargetLock(f"fsds:{outer}", "backup", shared=True), \
            pytest.raises(LockedError, match=r"is reading it \(as part of"):
        TargetLock(f"flatfs:{inner}", "restore").acquire()
    with TargetLock(f"fsds:{outer}", "restore"), \
            pytest.raises(LockedError, match="which holds it"):
        TargetLock(f"flatfs:{inner}", "backup", shared=True).acquire()
    with TargetLock(f"flatfs:{inner}", "restore"), \
            pytest.raises(LockedError, match="writing to a store inside it"):
        TargetLock(f"fsds:{outer}", "backup", shared=True).acquire()
    # all released: each way works again, and nothing was left in the tree
    for uri in (f"fsds:{outer}", f"flatfs:{inner}"):
        with TargetLock(uri, "backup", shared=True):
            pass
        with TargetLock(uri, "restore"):
            pass
    assert _tree(tmp_path) == ["repo", "repo/blocks"]


def test_a_repo_whose_blocks_are_a_symlink_to_another_disk(tmp_path, repo, arch, run_cli,
                                                           cli_env):
    """REPO/blocks -> elsewhere/blocks (a bigger disk): a backup of the blocks directory by
    its own path and a restore into the repo still exclude each other, both ways."""
    away = tmp_path / "disk2"
    away.mkdir()
    (repo / "blocks").rename(away / "blocks")
    (repo / "blocks").symlink_to(away / "blocks")
    backup = backing_up(cli_env, f"flatfs:{away / 'blocks'}", str(tmp_path / "b.tar.gz"))
    try:
        r = run_cli("restore", arch, f"kubo:{repo}", "--overwrite")
        _refused(r, f"{away / 'blocks'}: a dsbackup backup (PID {backup.pid}) is reading it")
    finally:
        assert finish(backup) == 0
    with TargetLock(f"kubo:{repo}", "restore"), pytest.raises(LockedError, match="writing"):
        TargetLock(f"flatfs:{away / 'blocks'}", "backup", shared=True).acquire()
    with TargetLock(f"kubo:{repo}", "backup", shared=True), \
            pytest.raises(LockedError, match="is reading it"):
        TargetLock(f"flatfs:{away / 'blocks'}", "restore").acquire()
    assert run_cli("restore", arch, f"kubo:{repo}", "--overwrite").returncode == 0


# -- two writers of stores that overlap -----------------------------------------------------


@pytest.fixture
def small(tmp_path, make_archive) -> Path:
    """An archive whose restore pauses after its first batch (many small chunks)."""
    a = tmp_path / "small.tar.gz"
    make_archive(a, [(b"/k%06d" % i, os.urandom(300)) for i in range(400)])
    return a


def _plan(tmp_path: Path) -> Path:
    plan = tmp_path / "copy.toml"
    plan.write_text('id = "copy"\nversion = "1"\n[[steps]]\nid = "copy"\ntype = "copy"\n'
                    'source = "source"\ntarget = "target"\n')
    return plan


@pytest.mark.parametrize("existing", [False, True], ids=["new-store", "existing-store"])
def test_a_writer_inside_or_above_a_store_being_written(tmp_path, small, run_cli, cli_env,
                                                        existing):
    """A restore into x/store held mid-way; a restore or migration into a store inside it
    (x/store/sub, x/store/s.db) or into x (holding it) is refused, exit 4, one line naming
    the other writer — before, each ran and wrote into the store being written."""
    x = tmp_path / "x"
    x.mkdir()
    store = x / "store"
    if existing:
        assert run_cli("restore", small, f"fsds:{store}").returncode == 0
    src = tmp_path / "src.db"
    assert run_cli("restore", small, f"sqlite:{src}").returncode == 0
    restore = restoring(cli_env, str(small), f"fsds:{store}", overwrite=existing)
    try:
        before = _tree(x)
        for args in (("restore", small, f"lmdb:{store / 'sub'}"),
                     ("restore", small, f"sqlite:{store / 's.db'}", "--overwrite"),
                     ("migrate", _plan(tmp_path), f"sqlite:{src}", f"lmdb:{store / 'sub'}")):
            r = run_cli(*args)
            _refused(r, f"(PID {restore.pid}", f"is writing to {store}, which holds it")
        r = run_cli("restore", small, f"fsds:{x}", "--overwrite")
        _refused(r, f"{x}: another dsbackup process (PID {restore.pid}) is writing to a "
                    f"store inside it ({store})")
        r = run_cli("migrate", _plan(tmp_path), f"sqlite:{src}", f"fsds:{x}")
        _refused(r, f"(PID {restore.pid}) is writing to a store inside it")
        # nothing was made in the store being written (no sub/, no lock files)
        assert sorted(p for p in _tree(x) if "sub" in p or p.endswith(".lock")) == \
            ["store.dsbackup.lock"]
        assert set(_tree(x)) >= set(before) - {"store.dsbackup.lock"}
    finally:
        assert finish(restore) == 0
    assert run_cli("verify", small).returncode == 0
    assert run_cli("restore", small, f"lmdb:{store / 'sub'}").returncode == 0


def test_a_writer_of_a_store_holding_one_being_written(tmp_path, small, run_cli, cli_env):
    """The other order: a restore into x/store/sub held mid-way refuses restores into
    x/store and x (exit 4, naming x/store/sub)."""
    store = tmp_path / "x" / "store"
    restore = restoring(cli_env, str(small), f"lmdb:{store / 'sub'}")
    try:
        for uri in (f"fsds:{store}", f"fsds:{tmp_path / 'x'}"):
            r = run_cli("restore", small, uri, "--overwrite")
            _refused(r, f"another dsbackup process (PID {restore.pid}) is writing to a store "
                        f"inside it ({store / 'sub'})")
    finally:
        assert finish(restore) == 0
    assert run_cli("restore", small, f"fsds:{tmp_path / 'x'}", "--overwrite").returncode == 0


def test_one_store_written_by_two_paths(tmp_path, small, run_cli, cli_env):
    """x/alias -> x/store: the lock files differ (alias.dsbackup.lock), the store is one."""
    store = tmp_path / "store"
    assert run_cli("restore", small, f"lmdb:{store}").returncode == 0
    (tmp_path / "alias").symlink_to(store)
    restore = restoring(cli_env, str(small), f"lmdb:{store}", overwrite=True)
    try:
        r = run_cli("restore", small, f"lmdb:{tmp_path / 'alias'}", "--overwrite")
        _refused(r, f"another dsbackup process (PID {restore.pid}) is writing to it")
    finally:
        assert finish(restore) == 0


def test_one_process_writing_two_nested_stores(tmp_path):
    """A migration may write two stores that overlap: its own locks do not refuse it."""
    outer, inner = tmp_path / "repo", tmp_path / "repo" / "blocks"
    with TargetLock(f"fsds:{outer}", "migration"), TargetLock(f"flatfs:{inner}", "migration"):
        pass
    with TargetLock(f"flatfs:{inner}", "migration"), TargetLock(f"fsds:{outer}", "migration"):
        pass
    assert _tree(tmp_path) == ["repo"]


def test_a_sibling_with_the_same_name_prefix_is_not_refused(tmp_path, small, run_cli,
                                                           cli_env):
    """x/store held mid-way by a restore: x/store2, x/store.db and x/store.d are other stores
    beside it (a common name prefix, not a path inside it), written at the same time."""
    x = tmp_path / "x"
    x.mkdir()
    restore = restoring(cli_env, str(small), f"fsds:{x / 'store'}")
    try:
        for uri in (f"lmdb:{x / 'store2'}", f"sqlite:{x / 'store.db'}", f"fsds:{x / 'store.d'}"):
            r = run_cli("restore", small, uri)
            assert r.returncode == 0, (uri, r.stderr)
    finally:
        assert finish(restore) == 0


def test_a_backup_and_a_writer_of_siblings_with_a_name_prefix(tmp_path, small, run_cli,
                                                             cli_env):
    """A backup of x/a held mid-way: a restore into x/ab (a name prefix) is not refused."""
    a = tmp_path / "x" / "a"
    with open_datastore(f"lmdb:{a}") as ds:
        keys = [b"/k%06d" % i for i in range(3000)]
        ds.put_many(keys, [os.urandom(200) for _ in keys])
    backup = backing_up(cli_env, f"lmdb:{a}", str(tmp_path / "a.tar.gz"))
    try:
        r = run_cli("restore", small, f"lmdb:{tmp_path / 'x' / 'ab'}")
        assert r.returncode == 0, r.stderr
    finally:
        assert finish(backup) == 0
