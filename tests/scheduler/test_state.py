"""Persistent state (atomic, round-trips) and the state-directory lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from dsbackup.errors import LockedError, SchedulerError
from dsbackup.scheduler.config import RunRecord, ScheduleStatistics
from dsbackup.scheduler.state import ArchiveEntry, DaemonLock, ScheduleState, StateStore

UTC = timezone.utc
T = datetime(2026, 1, 6, 3, 0, tzinfo=UTC)


def test_state_round_trips(tmp_path):
    store = StateStore(tmp_path / "st")
    st = ScheduleState(
        last_run=T, next_run=T, statistics=ScheduleStatistics(runs=3, successes=2, failures=1,
                                                              last_success=T),
        last_result=RunRecord(ok=True, started=T, finished=T, trigger="manual", pruned=["a"]),
        archives=[ArchiveEntry(path="/b/x.tar.gz", created=T, fingerprint="f", verified=True)],
        running={"started": T.isoformat(), "slot": None, "trigger": "schedule"})
    store.save({"db": st})
    back = StateStore(tmp_path / "st").load()["db"]
    assert back == st
    assert back.statistics.success_rate == pytest.approx(2 / 3)
    assert not [p for p in (tmp_path / "st").iterdir() if p.name != "state.json"]


def test_unreadable_or_future_state_is_an_error(tmp_path):
    (tmp_path / "state.json").write_text("{broken")
    with pytest.raises(SchedulerError, match="unreadable"):
        StateStore(tmp_path).load()
    (tmp_path / "state.json").write_text('{"version": 99}')
    with pytest.raises(SchedulerError, match="version"):
        StateStore(tmp_path).load()
    # valid JSON of another shape: an AttributeError, 'internal error (a bug)' from the CLI
    for other in ('[]', '{"version": 1, "schedules": []}', '{"version": 1, "schedules": {"a": 5}}',
                  '"text"'):
        (tmp_path / "state.json").write_text(other)
        with pytest.raises(SchedulerError, match="unreadable"):
            StateStore(tmp_path).load()


HOLD = """
import sys, time
sys.path.insert(0, sys.argv[2])
from dsbackup.scheduler.state import DaemonLock
lock = DaemonLock(sys.argv[1]); lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_lock_held_by_another_process_and_taken_over_after_its_death(tmp_path):
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), src],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match=f"locked by pid {proc.pid}") as info:
            DaemonLock(tmp_path).acquire()
        assert info.value.exit_code == 4
    finally:
        proc.kill()
        proc.wait()
    lock = DaemonLock(tmp_path)
    lock.acquire()  # the dead holder's lock file is stale
    assert lock.stale_pid == proc.pid
    assert (tmp_path / "daemon.lock").read_text().split() == [str(os.getpid())]
    with pytest.raises(LockedError, match="in use in this process"):
        DaemonLock(tmp_path).acquire()
    lock.release()
    again = DaemonLock(tmp_path)
    again.acquire()
    assert again.stale_pid is None  # released cleanly: nothing stale
    again.release()


KILLED_IN_SAVE = """
import resource, signal, sys
sys.path.insert(0, sys.argv[2])
from datetime import datetime, timezone
from dsbackup.scheduler.state import ArchiveEntry, ScheduleState, StateStore
t = datetime(2026, 1, 6, tzinfo=timezone.utc)
def state(n):
    return {"db": ScheduleState(archives=[ArchiveEntry(path="/b/x%06d.tar.gz" % i, created=t)
                                          for i in range(n)])}
store = StateStore(sys.argv[1])
store.save(state(10))
# the kernel kills the process (SIGXFSZ, which Python ignores) in the middle of writing
# the next, larger state: as a SIGKILL at that moment would
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
store.save(state(5000))
"""


def test_temp_files_of_a_daemon_killed_while_saving_are_removed_by_the_next(tmp_path):
    """A daemon killed during a save left `.state.json.PID.TID.tmp` (MBs with many archives)
    in the state directory for good: no later daemon removed it."""
    from dsbackup.scheduler import BackupScheduler, SchedulerConfig

    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    proc = subprocess.run([sys.executable, "-c", KILLED_IN_SAVE, str(tmp_path), src])
    assert proc.returncode == -signal.SIGXFSZ
    assert [p.stat().st_size for p in tmp_path.glob(".state.json.*.tmp")] == [100_000]
    assert len(StateStore(tmp_path).load()["db"].archives) == 10  # the last whole state
    s = BackupScheduler(SchedulerConfig(default_backup_dir=tmp_path / "b", state_path=tmp_path,
                                        health_check_interval=None))
    s.close()
    assert not list(tmp_path.glob(".state.json.*.tmp"))
    assert len(StateStore(tmp_path).load()["db"].archives) == 10


def test_relative_archive_paths_resolve_in_the_backup_dir_else_from_here(tmp_path, monkeypatch):
    from datetime import datetime, timezone

    from dsbackup.scheduler.state import ArchiveEntry, resolve_relative_paths

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    backups, moved = tmp_path / "backups", tmp_path / "old"
    backups.mkdir()
    moved.mkdir()
    (backups / "a.tar.gz").write_bytes(b"a")
    (moved / "b.tar.gz").write_bytes(b"b")
    monkeypatch.chdir(tmp_path)
    entries = [ArchiveEntry("../x/backups/a.tar.gz", now), ArchiveEntry("old/b.tar.gz", now),
               ArchiveEntry("gone/c.tar.gz", now), ArchiveEntry(str(backups / "d.tar.gz"), now),
               ArchiveEntry("s3://bucket/p/e.tar.gz", now)]
    assert resolve_relative_paths(entries, backups) == 3
    assert [e.path for e in entries] == [
        str(backups / "a.tar.gz"), str(moved / "b.tar.gz"), str(backups / "c.tar.gz"),
        str(backups / "d.tar.gz"), "s3://bucket/p/e.tar.gz"]


def test_a_full_state_directory_is_one_line_naming_it(tmp_path, run_cli):
    """A state directory on a full filesystem: `schedule run-once` (and `schedule run`) said
    'schedule run-once run-once: no space left on device' (the daemon lock's PID write, which
    names no file) and kept the lock taken; now one line naming the lock file and the
    filesystem, exit 2, the lock let go (hostile review)."""
    import shutil

    full = tmp_path / "full"
    full.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)]).returncode:
        pytest.skip("needs a real full filesystem (root and mount)")
    try:
        (full / "st").mkdir()
        st = os.statvfs(full)
        (full / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize))
        cfg = tmp_path / "s.toml"
        cfg.write_text(f'[scheduler]\nbackup_dir = "{tmp_path}"\nstate_dir = "{full / "st"}"\n'
                       'health_check_interval = "off"\n[[schedule]]\nid = "s1"\n'
                       f'cron = "@daily"\nsource = "memory:"\n')
        r = run_cli("schedule", "run-once", "s1", "--config", cfg)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        [line] = r.stderr.splitlines()
        assert line.startswith(f"dsbackup: error: {full / 'st' / 'daemon.lock'}: no space "
                               f"left on {full}"), line
        with pytest.raises(SchedulerError, match="no space left on"):
            DaemonLock(full / "st").acquire()
        (full / "filler").unlink()
        with DaemonLock(full / "st"):  # not kept by the failed attempt in this process
            pass
    finally:
        subprocess.run(["umount", "-l", str(full)], check=False)
