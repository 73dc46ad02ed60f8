"""Holds on a running backup's parent chain (dsbackup/storage/holds.py): locked while the
holder lives, seen by another process; a killed holder's hold keeps nothing and is removed by
the next holder there unless its backup's temp file is left for `backup --resume`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from dsbackup.storage.holds import hold_chain, holds_in, remove_dead_holds

_HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from dsbackup.storage.holds import hold_chain
    h = hold_chain([Path(sys.argv[1])], Path(sys.argv[2]))
    print("held", flush=True)
    sys.stdin.read()
    h.release()
""")


def _holder(cli_env, archive: Path, child: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(archive), str(child)],
                         env=cli_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_hold_is_live_while_its_holder_runs_and_gone_after(tmp_path, cli_env):
    a = tmp_path / "A"
    a.mkdir()
    (a / "x.tar.gz").write_bytes(b"x")
    p = _holder(cli_env, a / "x.tar.gz", tmp_path / "B" / "y.tar.gz")
    [h] = holds_in(a)
    assert (h.archive, h.child, h.pid, h.live) == ("x.tar.gz", str(tmp_path / "B/y.tar.gz"),
                                                   p.pid, True)
    remove_dead_holds(a)  # a live hold stays
    assert holds_in(a) == [h]
    p.stdin.close()
    assert p.wait(timeout=60) == 0
    assert holds_in(a) == []  # released: removed


def test_a_killed_holder_s_hold_is_dead_and_removed_unless_its_temp_file_is_left(tmp_path,
                                                                                 cli_env):
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    (a / "x.tar.gz").write_bytes(b"x")
    p = _holder(cli_env, a / "x.tar.gz", b / "y.tar.gz")
    p.send_signal(signal.SIGKILL)
    p.wait()
    [h] = holds_in(a)
    assert not h.live and h.child == str(b / "y.tar.gz")
    left = b / ".y.tar.gz.tmp-1-0123456789ab"
    left.write_bytes(b"")
    remove_dead_holds(a)  # its backup's temp file is there: kept (it names the leftover)
    assert holds_in(a) == [h]
    left.unlink()
    remove_dead_holds(a)
    assert holds_in(a) == []


def test_a_symlinked_parent_is_held_at_its_link_and_its_file(tmp_path):
    real, links = tmp_path / "real", tmp_path / "links"
    real.mkdir()
    links.mkdir()
    (real / "x.tar.gz").write_bytes(b"x")
    (links / "x.tar.gz").symlink_to(real / "x.tar.gz")
    with hold_chain([links / "x.tar.gz"], tmp_path / "y.tar.gz") as h:
        assert len(h.paths) == 2
        assert [x.archive for x in holds_in(real)] == [x.archive for x in holds_in(links)] \
            == ["x.tar.gz"]
        assert all(x.live for x in holds_in(real) + holds_in(links))
    assert holds_in(real) == holds_in(links) == []
    assert sorted(os.listdir(real)) == ["x.tar.gz"]


def test_a_hold_names_its_child_by_absolute_path(tmp_path, monkeypatch):
    """A backup given a relative path (`backup S B/y.tar.gz`): its hold names the archive by
    its absolute path, which a prune run from another directory can find (its temp file)."""
    (tmp_path / "x.tar.gz").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    with hold_chain([Path("x.tar.gz")], Path("B") / "y.tar.gz"):
        [h] = holds_in(tmp_path)
        assert h.child == str(tmp_path / "B" / "y.tar.gz")


def test_a_hold_locked_by_a_dead_hold_cleaner_before_its_owner_is_made_again(tmp_path,
                                                                             monkeypatch):
    """Another backup's dead-hold cleanup may open and lock a new hold between its creation
    and its owner's flock (it then removes it: empty, no child). The owner's flock fails
    then; it must make another hold, not go on without one (a prune could delete the
    parent of the running backup)."""
    import fcntl as real_fcntl

    from dsbackup.storage import holds as holds_mod

    (tmp_path / "x.tar.gz").write_bytes(b"x")
    cleaners: list[int] = []

    class Racing:
        LOCK_EX, LOCK_NB, LOCK_UN = real_fcntl.LOCK_EX, real_fcntl.LOCK_NB, real_fcntl.LOCK_UN

        @staticmethod
        def flock(fd, op):
            if not cleaners:  # the other backup's remove_dead_holds, right now
                name = next(n for n in os.listdir(tmp_path) if ".hold-" in n)
                other = os.open(tmp_path / name, os.O_RDONLY)
                real_fcntl.flock(other, real_fcntl.LOCK_EX | real_fcntl.LOCK_NB)
                os.unlink(tmp_path / name)
                cleaners.append(other)  # still locked when the owner tries
            return real_fcntl.flock(fd, op)

    monkeypatch.setattr(holds_mod, "fcntl", Racing)
    try:
        h = hold_chain([tmp_path / "x.tar.gz"], tmp_path / "y.tar.gz")
    finally:
        for fd in cleaners:
            os.close(fd)
    try:
        assert len(h.paths) == 1 and h.paths[0].exists()
        [held] = holds_in(tmp_path)
        assert held.live and held.child == str(tmp_path / "y.tar.gz")
    finally:
        h.release()


def test_a_prune_never_sees_a_running_backup_s_hold_unlocked(tmp_path, cli_env, monkeypatch):
    """A hold used to be created under its name, then locked: a prune listing the directory in
    between saw an unlocked (empty) hold, took it for a dead backup's and deleted the parent
    of the running incremental, which then failed (exit 2, "deleted while this backup ran").
    The prune is run here at the instant a hold's name first appears in the directory (after
    the call that makes it: the file's creation on the old code, its rename into place now):
    it must keep the parent (rule in-progress) and the backup succeed. Fails on the old code
    (the parent deleted, MissingParentError)."""
    import json
    import re
    import subprocess
    import sys
    import time

    from dsbackup import datasets
    from dsbackup.engine.backup import BackupManager
    from dsbackup.storage import holds as holds_mod

    store, d, e = tmp_path / "store", tmp_path / "D", tmp_path / "E"
    d.mkdir()
    e.mkdir()
    datasets.write_lmdb(str(store), datasets.iter_small(200))
    parent, newer = d / "n_20260101_000000.tar.gz", d / "n_20260102_000000.tar.gz"
    BackupManager().create_backup(f"lmdb:{store}", parent)
    time.sleep(0.01)  # a later creation time in the manifest
    BackupManager().create_backup(f"lmdb:{store}", newer)
    pruned: list[dict] = []
    hold = re.compile(r"^\.n_20260101_000000\.tar\.gz\.hold-\d+-[0-9a-f]{12}$")

    def prune_when_a_hold_appears() -> None:
        if not pruned and any(hold.match(n) for n in os.listdir(d)):
            r = subprocess.run([sys.executable, "-m", "dsbackup", "prune", str(d),
                                "--keep-last", "1", "--json"], env=cli_env,
                               capture_output=True, text=True, timeout=120)
            pruned.append(json.loads(r.stdout))

    class RacingOs:
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def open(*a, **kw):
            fd = os.open(*a, **kw)
            prune_when_a_hold_appears()
            return fd

        @staticmethod
        def rename(*a, **kw):
            os.rename(*a, **kw)
            prune_when_a_hold_appears()

    monkeypatch.setattr(holds_mod, "os", RacingOs())
    BackupManager().create_backup(f"lmdb:{store}", e / "inc.tar.gz", parent=parent)
    assert pruned, "the prune did not run"
    assert parent.exists() and (e / "inc.tar.gz").exists()
    [decision] = [x for x in _dicts(pruned[0]) if x.get("id") == parent.name]
    assert decision["keep"] and decision["rule"] == "in-progress", decision
    assert holds_in(d) == []  # released at the end


def _dicts(obj):
    if isinstance(obj, dict):
        yield obj
        obj = list(obj.values())
    if isinstance(obj, list):
        for x in obj:
            yield from _dicts(x)


def test_a_hold_on_an_archive_of_a_250_byte_name_is_found_under_its_name(tmp_path):
    """`.NAME.hold-PID-RANDOM.new` was too long for a name of 225 bytes or more: the hold
    failed with a warning and a prune could delete the parent of the running backup."""
    name = "p" * 243 + ".tar.gz"
    (tmp_path / name).write_bytes(b"x")
    (tmp_path / "x.tar.gz").write_bytes(b"x")
    with hold_chain([tmp_path / name, tmp_path / "x.tar.gz"], tmp_path / "c.tar.gz") as h:
        assert len(h.paths) == 2
        assert sorted((x.archive, x.live) for x in holds_in(tmp_path)) == [
            (name, True), ("x.tar.gz", True)]
