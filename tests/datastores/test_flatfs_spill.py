"""flatfs_spill.py: a spill directory is private, locked while it lives, removed on close;
one left by a killed process is removed by the next listing that spills into the same root,
one whose owner still runs is left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from dsbackup.datastores import flatfs_spill as spill_mod
from dsbackup.datastores.flatfs_spill import SPILL_PREFIX, SpillDir, remove_stale
from tests.support.deadwriter import dead_pid

HOLD = ("import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o600)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n")


def _left(root, pid: int, *, lock: bool = True, age: float = 0.0):
    d = root / f"{SPILL_PREFIX}{pid}-abcdefgh"
    d.mkdir()
    (d / "b0").write_bytes(b"\x03ABC")
    if lock:
        (d / "lock").write_bytes(b"")
    if age:
        t = time.time() - age
        os.utime(d, (t, t))
    return d


def test_spill_dir_is_private_locked_and_removed(tmp_path):
    with SpillDir(str(tmp_path)) as sd:
        assert os.path.basename(sd.path).startswith(f"{SPILL_PREFIX}{os.getpid()}-")
        assert os.stat(sd.path).st_mode & 0o777 == 0o700
        assert remove_stale(str(tmp_path)) == 0  # our own: the lock is held
        assert os.path.isdir(sd.path)
    assert os.listdir(tmp_path) == []


def test_left_by_a_dead_process_removed_by_the_next_spill(tmp_path):
    dead = _left(tmp_path, dead_pid())
    no_lock_old = _left(tmp_path, dead_pid(), lock=False, age=3600)
    no_lock_young = _left(tmp_path, dead_pid(), lock=False)
    other = tmp_path / "unrelated"
    other.mkdir()
    alive = _left(tmp_path, os.getpid())
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(alive / "lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with SpillDir(str(tmp_path)) as sd:
            left = set(os.listdir(tmp_path))
            assert dead.name not in left and no_lock_old.name not in left
            assert {no_lock_young.name, alive.name, "unrelated",
                    os.path.basename(sd.path)} == left
        assert (alive / "b0").exists()
    finally:
        holder.kill()
        holder.wait()
    assert remove_stale(str(tmp_path)) == 1  # the holder is gone now
    assert sorted(os.listdir(tmp_path)) == sorted([no_lock_young.name, "unrelated"])


def test_another_listing_between_lock_file_and_flock_leaves_it_alone(tmp_path, monkeypatch):
    """A second process's clean-up that runs after this one made its lock file but before it
    took the lock must neither remove the live directory nor make this one's lock fail."""
    import fcntl

    from dsbackup.datastores import flatfs_spill

    real_flock = fcntl.flock
    seen: list[int] = []

    def racing_flock(fd, op):
        if not seen:  # the first flock is the opener's own: the other process runs first
            seen.append(-1)
            seen[0] = remove_stale(str(tmp_path))
        return real_flock(fd, op)

    monkeypatch.setattr(flatfs_spill.fcntl, "flock", racing_flock)
    with SpillDir(str(tmp_path)) as sd:
        assert seen == [0]
        assert os.path.isdir(sd.path)
        assert remove_stale(str(tmp_path)) == 0
        assert os.path.isdir(sd.path)
    assert os.listdir(tmp_path) == []


def test_a_forked_child_does_not_keep_the_spill_directory_locked(tmp_path):
    """A worker forked while a listing spills closes its copy of the lock at once: after the
    listing's process dies, the next listing removes the directory even while such a child
    still lives (a SIGKILLed backup's workers outlive it for a moment)."""
    held = SpillDir(str(tmp_path)).open()
    path = held.path
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # the worker: says it runs (its fork hooks have run), lives on until told
        os.close(w)
        os.write(ready_w, b"x")
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"x"
        # the owner "dies": its own descriptor closes, the directory stays
        os.close(held._lock)
        spill_mod._HELD.discard(held._lock)
        held._lock = -1
        assert remove_stale(str(tmp_path)) == 1
        assert not os.path.exists(path)
    finally:
        os.close(w)
        os.close(ready_r)
        os.waitpid(child, 0)
        held.path = ""
        held.close()
