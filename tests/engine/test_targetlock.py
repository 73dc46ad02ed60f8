"""The target lock (issue 20, item 4): a second writer of the same store is refused with
exit 4 naming the holder's PID; temp names are unique per process; the restore journal's
path comes from the filesystem path, never the URI string (issue 16)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest
from paused import paused

from dsbackup.engine.restore import _journal_path
from dsbackup.engine.targetlock import TargetLock, lock_path
from dsbackup.errors import LockedError

RECORDS = [(b"/K%04d" % i, b"v%d" % i) for i in range(200)]


def _hold(cli_env, uri: str) -> subprocess.Popen:
    """Another process holding the target's lock until its stdin closes."""
    code = textwrap.dedent(f"""
        import sys
        from dsbackup.engine.targetlock import TargetLock
        with TargetLock({uri!r}, "test holder"):
            print("held", flush=True)
            sys.stdin.read()
    """)
    p = subprocess.Popen([sys.executable, "-c", code], env=cli_env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.mark.parametrize("scheme", ["lmdb", "flatfs", "sqlite"])
def test_second_restore_is_refused_with_holder_pid(tmp_path, make_archive, run_cli, cli_env,
                                                   scheme):
    arch = tmp_path / "a.tar.gz"
    make_archive(arch, RECORDS)
    uri = f"{scheme}:{tmp_path / 'target'}"
    holder = _hold(cli_env, uri)
    try:
        r = run_cli("restore", arch, uri)
        assert r.returncode == 4, r.stderr
        assert f"PID {holder.pid}" in r.stderr
        assert "Traceback" not in r.stderr
        assert not (tmp_path / "target").exists()  # refused before the target was touched
    finally:
        holder.stdin.close()
        holder.wait()
    r = run_cli("restore", arch, uri)  # the holder is gone: the lock is free again
    assert r.returncode == 0, r.stderr
    assert not lock_path(uri).exists()


def test_two_concurrent_restores_one_wins(tmp_path, make_archive, cli_env):
    arch = tmp_path / "a.tar.gz"
    make_archive(arch, [(b"/k%06d" % i, os.urandom(200)) for i in range(20000)])
    uri = f"lmdb:{tmp_path / 'target'}"
    procs = [subprocess.Popen([sys.executable, "-m", "dsbackup", "restore", str(arch), uri],
                              env=cli_env, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in outs)
    for _rc, err in outs:
        assert "Traceback" not in err, err
    # either one was refused (4) while the other ran, or they ran one after the other and
    # the second found a non-empty target (2); never both writing at once
    assert codes in ([0, 2], [0, 4]), outs
    from dsbackup.datastores import open_datastore
    ds = open_datastore(uri, readonly=True)
    try:
        n = sum(len(k) for k, _ in ds.scan_key_sizes(b"", None, max_records=100000))
    finally:
        ds.close()
    assert n == 20000


def test_lock_is_reentrant_only_for_its_thread(tmp_path):
    uri = f"lmdb:{tmp_path / 's'}"
    with TargetLock(uri, "outer"):
        with TargetLock(uri, "inner"):  # a migration's rollback restoring into its store
            pass
        assert lock_path(uri).exists()
        err: list[BaseException] = []

        def other() -> None:
            try:
                TargetLock(uri, "other thread").acquire()
            except LockedError as exc:
                err.append(exc)
        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert err and "another thread" in str(err[0])
    assert not lock_path(uri).exists()


def test_journal_path_ignores_uri_parameters(tmp_path):
    d = tmp_path / "blocks"
    assert _journal_path(type("T", (), {"uri": f"flatfs:{d}?shard=suffix/2"})()) == \
        tmp_path / "blocks.dsbackup-restore.json"
    assert _journal_path(type("T", (), {"uri": "memory:"})()) is None


def test_overwrite_into_flatfs_with_shard_in_uri(tmp_path, make_archive, run_cli):
    """issue 16: `restore --overwrite` into flatfs:DIR?shard=suffix/2 built the journal path
    from the whole URI ('DIR?shard=suffix/2.dsbackup-restore.json.tmp') and crashed."""
    arch = tmp_path / "a.tar.gz"
    make_archive(arch, [(b"/ABCDEF%02d" % i, b"v%d" % i) for i in range(30)])
    d = tmp_path / "blocks"
    (d / "ZZ").mkdir(parents=True)  # a store without SHARDING (as Helia writes them)
    (d / "ZZ" / "OLDKEYZZ.data").write_bytes(b"old")
    uri = f"flatfs:{d}?shard=suffix/2"
    r = run_cli("restore", "--overwrite", arch, uri)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert not any("?" in p.name for p in tmp_path.iterdir())
    assert not (tmp_path / "blocks.dsbackup-restore.json").exists()  # finished: removed
    from dsbackup.datastores import open_datastore
    ds = open_datastore(uri, readonly=True)
    try:
        got = {k for ks, _ in ds.scan_key_sizes(b"", None, max_records=1000) for k in ks}
    finally:
        ds.close()
    assert len(got) == 31 and b"/OLDKEYZZ" in got
    assert not (d / "SHARDING").exists()


def test_journal_temp_names_are_unique(tmp_path):
    from dsbackup.engine.restore_journal import write_journal

    j = tmp_path / "t.dsbackup-restore.json"
    threads = [threading.Thread(target=write_journal, args=(j, {"n": i})) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert j.exists()
    assert [p.name for p in tmp_path.iterdir()] == [j.name]  # no temp file left behind


def test_migration_into_a_locked_target_is_refused(tmp_path, make_archive, run_cli, cli_env):
    from dsbackup.datastores import open_datastore

    src, dst = f"lmdb:{tmp_path / 'src'}", f"lmdb:{tmp_path / 'dst'}"
    ds = open_datastore(src)
    ds.put_many([k for k, _ in RECORDS], [v for _, v in RECORDS])
    ds.close()
    plan = tmp_path / "plan.toml"
    plan.write_text('id = "c"\nversion = "1"\n[[steps]]\nid = "copy"\ntype = "copy"\n')
    holder = _hold(cli_env, dst)
    try:
        r = run_cli("migrate", plan, src, dst)
        assert r.returncode == 4, r.stderr
        assert f"PID {holder.pid}" in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "dst").exists()
    finally:
        holder.stdin.close()
        holder.wait()
    r = run_cli("migrate", plan, src, dst)
    assert r.returncode == 0, r.stderr
    assert not lock_path(dst).exists() and not lock_path(src).exists()


def test_locking_a_missing_source_creates_nothing(tmp_path):
    from dsbackup import MigrationManager, MigrationPlan, MigrationStep
    from dsbackup.errors import DatastoreError

    plan = MigrationPlan(id="m", version="1", steps=[MigrationStep(id="mv", type="move")])
    with pytest.raises(DatastoreError, match="does not exist"):
        MigrationManager().execute_migration(plan, f"lmdb:{tmp_path}/typo/dir/src",
                                             f"lmdb:{tmp_path}/dst")
    assert not (tmp_path / "typo").exists()


def test_backup_of_a_store_being_restored_into_is_refused(tmp_path, run_cli, cli_env):
    # a backup of the target of a running restore read the half-written store and said
    # "OK, exit 0" (0 records, or some of them); now exit 4 naming the writer, no archive
    from dsbackup.datastores import open_datastore
    from dsbackup.engine.backup import BackupManager
    from dsbackup.engine.config import BackupConfig

    src = f"lmdb:{tmp_path / 'src'}"
    with open_datastore(src) as ds:
        ds.put_many([k for k, _ in RECORDS], [v for _, v in RECORDS])
    holder = _hold(cli_env, src)
    try:
        for given in (src, str(tmp_path / "src")):  # a URI or the bare path of the store
            r = run_cli("backup", given, tmp_path / "a.tar.gz")
            assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
            assert f"PID {holder.pid}, test holder" in r.stderr.splitlines()[-1], r.stderr
            assert "back it up when that has finished" in r.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "src.dsbackup.lock"]
    finally:
        holder.stdin.close()
        holder.wait()
    with TargetLock(src, "this process"):  # its own lock (a migration's backup_before)
        BackupManager(BackupConfig(workers=1)).create_backup(src, tmp_path / "b.tar.gz")
    r = run_cli("backup", src, tmp_path / "a.tar.gz")
    assert r.returncode == 0, r.stderr


def test_a_filesystem_without_flock_does_not_fail_the_backup(tmp_path, monkeypatch):
    # on a filesystem without flock (ENOLCK on some NFS) the check of a leftover lock file
    # was a raw OSError out of the backup; no writer can hold such a lock: nothing to refuse
    import errno
    import fcntl

    from dsbackup.engine import targetlock

    src = f"lmdb:{tmp_path / 'src'}"
    lock_path(src).write_text("")  # a lock file left by an earlier restore

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with targetlock.TargetLock(src, "backup", shared=True):
        pass


def _store(tmp_path, name: str = "store") -> str:
    from dsbackup.datastores import open_datastore

    uri = f"lmdb:{tmp_path / name}"
    with open_datastore(uri) as ds:
        keys = [b"/k%06d" % i for i in range(3000)]
        ds.put_many(keys, [os.urandom(300) for _ in keys])
    return uri


def test_restore_into_a_store_being_backed_up_is_refused(tmp_path, make_archive, run_cli,
                                                         cli_env):
    """A backup holds its source (a shared flock on the store's directory: nothing is created
    beside or in it) while it reads it: `restore --overwrite` into that store is refused with
    exit 4 naming the backup's PID, the store untouched; a second backup runs beside it; once
    the backup ends (successfully) the restore runs."""
    uri = _store(tmp_path)
    arch = tmp_path / "other.tar.gz"
    make_archive(arch, RECORDS)
    before = (tmp_path / "store" / "data.mdb").read_bytes()
    names = sorted(p.name for p in tmp_path.iterdir())
    backup = paused(cli_env, f"""
        BackupManager(BackupConfig(workers=1, chunk_size=16)).create_backup(
            {uri!r}, {str(tmp_path / 'b.tar.gz')!r}, progress=pause)
    """)
    try:
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".b.tar")) \
            == names  # the source's directory and its parent unchanged (no lock file)
        r = run_cli("restore", arch, uri, "--overwrite")
        assert r.returncode == 4, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"a dsbackup backup (PID {backup.pid}) is reading it" in lines[0], lines
        assert (tmp_path / "store" / "data.mdb").read_bytes() == before
        assert not lock_path(uri).exists()  # the refused restore's lock file is gone
        r2 = run_cli("backup", uri, tmp_path / "c.tar.gz")  # backups share the store
        assert r2.returncode == 0, r2.stderr
    finally:
        backup.stdin.close()
        assert backup.wait(timeout=120) == 0
    assert (tmp_path / "b.tar.gz").exists()
    r = run_cli("restore", arch, uri, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert not lock_path(uri).exists()


def test_backup_of_a_store_a_restore_is_writing_is_refused(tmp_path, make_archive, run_cli,
                                                          cli_env):
    """The other way round, both real: a restore paused mid-way holds the store; a backup of
    it is refused (exit 4, one line naming the restore), and no archive appears."""
    arch = tmp_path / "a.tar.gz"
    make_archive(arch, [(b"/k%06d" % i, os.urandom(300)) for i in range(20000)])
    uri = f"lmdb:{tmp_path / 'target'}"
    restore = paused(cli_env, f"""
        BackupManager(BackupConfig(workers=1)).restore_backup(
            {str(arch)!r}, {uri!r}, progress=pause)
    """)
    try:
        r = run_cli("backup", uri, tmp_path / "b.tar.gz")
        assert r.returncode == 4, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"PID {restore.pid}, restore of" in lines[0] and "is writing to it" in lines[0]
        assert not (tmp_path / "b.tar.gz").exists()
    finally:
        restore.stdin.close()
        assert restore.wait(timeout=120) == 0
    assert run_cli("backup", uri, tmp_path / "b.tar.gz").returncode == 0


def test_in_one_process_a_restore_into_a_store_being_backed_up_is_refused(tmp_path):
    uri = _store(tmp_path)
    with (TargetLock(uri, "backup", shared=True), TargetLock(uri, "backup 2", shared=True),
          pytest.raises(LockedError, match="a dsbackup backup .* is reading it")):
        TargetLock(uri, "restore").acquire()
    assert not lock_path(uri).exists()
    with TargetLock(uri, "restore"):  # free again; a writer's own backup is no obstacle
        with TargetLock(uri, "backup", shared=True):
            pass
        assert lock_path(uri).exists()
    assert not lock_path(uri).exists()


def test_a_forked_child_does_not_keep_the_store_held(tmp_path):
    """A scan worker forked while a backup holds its source closes its copy of the hold at
    once: one outliving a SIGKILLed backup would otherwise keep restores refused."""
    uri = _store(tmp_path)
    with TargetLock(uri, "backup", shared=True):
        r, w = os.pipe()
        started_r, started_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: wait until the parent has let go, then stay alive a while
            os.close(w)
            os.write(started_w, b"s")  # (its fork handlers have run: it runs Python code)
            os.read(r, 1)
            os._exit(0)
        os.close(r)
        os.close(started_w)
    # a child not yet scheduled since the fork still shares the hold (a loaded machine)
    assert os.read(started_r, 1) == b"s"
    os.close(started_r)
    try:
        with TargetLock(uri, "restore"):  # the child still lives: no hold of it left
            pass
    finally:
        os.close(w)
        os.waitpid(pid, 0)


def test_a_released_hold_is_free_even_while_a_copy_of_its_descriptor_lives(tmp_path):
    """A forked child holds a copy of the backup's directory descriptor until its at-fork
    hook closes it, which a loaded machine may run after the parent has released: the
    release unlocks, so the copy (here a dup in this process) holds nothing."""
    uri = _store(tmp_path)
    hold = TargetLock(uri, "backup", shared=True)
    hold.acquire()
    copy = os.dup(hold._dir_fd)
    try:
        hold.release()
        with TargetLock(uri, "restore"):
            pass
    finally:
        os.close(copy)


def test_a_store_inside_a_live_kubo_repo_is_refused(tmp_path, kubo_node_repo, make_archive,
                                                    run_cli):
    """A daemon holds REPO/repo.lock (a POSIX lock, in another process): a restore into
    kubo:REPO was refused, but one into leveldb:REPO/datastore or a store under REPO/blocks
    wrote under the live node, exit 0. Now exit 4, one line, nothing written."""
    repo = kubo_node_repo
    arch = tmp_path / "a.tar.gz"
    make_archive(arch, [(b"/x%03d" % i, b"v") for i in range(20)])
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import fcntl, os, sys
            fd = os.open({str(repo / 'repo.lock')!r}, os.O_RDWR)
            fcntl.lockf(fd, fcntl.LOCK_EX)
            print("held", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (repo / "datastore").mkdir(exist_ok=True)
        before = sorted(str(p) for p in repo.rglob("*"))
        for uri in (f"leveldb:{repo / 'datastore'}", f"fsds:{repo / 'blocks' / 'x'}"):
            r = run_cli("restore", arch, uri, "--overwrite")
            assert r.returncode == 4, r.stderr
            assert r.stderr.strip().splitlines() == [
                f"dsbackup: error: {uri.split(':', 1)[1]}: inside the Kubo repo {repo}, whose "
                "daemon is running (repo.lock is held); stop the daemon first"]
        assert sorted(str(p) for p in repo.rglob("*")) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    r = run_cli("restore", arch, f"fsds:{repo / 'blocks' / 'x'}")
    assert r.returncode == 0, r.stderr


def test_a_migration_from_a_store_being_written_is_refused(tmp_path, make_archive, run_cli,
                                                           cli_env):
    """A migration reads its source as a backup does, so it holds it the same way: from a
    store a restore is writing it copied the half-written store and said 'ok', exit 0 (9477
    of 20000 records); from a store whose restore was killed (its journal left) likewise;
    and a restore into the source of a running migration was not refused. Now exit 4 naming
    the writer, exit 2 naming the journal, and exit 4 naming the migration (hostile review)."""
    from dsbackup.datastores import open_datastore
    from dsbackup.engine.restore_journal import journal_path

    src, dst = f"lmdb:{tmp_path / 'src'}", f"lmdb:{tmp_path / 'dst'}"
    with open_datastore(src) as ds:
        ds.put_many([k for k, _ in RECORDS], [v for _, v in RECORDS])
    plan = tmp_path / "plan.toml"
    plan.write_text('id = "c"\nversion = "1"\n[[steps]]\nid = "copy"\ntype = "copy"\n')
    holder = _hold(cli_env, src)
    try:
        r = run_cli("migrate", plan, src, dst)
        assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
        line = r.stderr.splitlines()[-1]
        assert f"PID {holder.pid}, test holder" in line, r.stderr
        assert "migrate it when that has finished" in line, line
        assert not (tmp_path / "dst").exists()
    finally:
        holder.stdin.close()
        holder.wait()
    journal = journal_path(tmp_path / "src")
    journal.write_text("{}")  # a restore into it was killed
    r = run_cli("migrate", plan, src, dst)
    assert r.returncode == 2 and "did not finish" in r.stderr and str(journal) in r.stderr
    assert not (tmp_path / "dst").exists()
    journal.unlink()
    reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from dsbackup.migration.preflight import lock_stores
        from dsbackup.migration.config import MigrationConfig
        from dsbackup.migration.plan import load_plan
        with lock_stores(load_plan({str(plan)!r}), MigrationConfig(), {src!r}, {dst!r}):
            print("held", flush=True)
            sys.stdin.read()
    """)], env=cli_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "held"
        arch = tmp_path / "a.tar.gz"
        make_archive(arch, RECORDS[:5])
        r = run_cli("restore", "--overwrite", arch, src)
        assert r.returncode == 4 and f"PID {reader.pid}" in r.stderr, r.stderr
    finally:
        reader.stdin.close()
        reader.wait()
    r = run_cli("migrate", plan, src, dst)
    assert r.returncode == 0, r.stderr
    assert not lock_path(dst).exists() and not lock_path(src).exists()
