"""Persistent state (atomic, round-trips) and the state-directory lock."""

from __future__ import annotations

import os
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
