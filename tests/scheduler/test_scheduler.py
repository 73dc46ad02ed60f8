"""BackupScheduler with a manual clock and a fake runner: timing, overlap, concurrency,
state, retention, cancellation."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from notifiers import Recorder

from dsbackup.errors import LockedError, SchedulerError
from dsbackup.scheduler import RetentionPolicy, ScheduledBackup
from dsbackup.scheduler.archives import parse_archive_name

from .conftest import FakeRunner

UTC = timezone.utc


def wait_for(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def daily(sid: str = "db", **kw) -> ScheduledBackup:
    return ScheduledBackup(id=sid, name=kw.pop("name", sid), schedule=kw.pop("cron", "0 3 * * *"),
                           source="memory:", **kw)


def test_add_list_get_remove(make_scheduler, clock):
    s = make_scheduler()
    a = s.add_schedule(daily("a"))
    s.add_schedule(daily("b", cron="@hourly"))
    assert a.next_run == datetime(2026, 1, 6, 3, 0, tzinfo=UTC)
    assert [x.id for x in s.list_schedules()] == ["a", "b"]
    assert s.get_schedule("b").next_run == datetime(2026, 1, 5, 13, 0, tzinfo=UTC)
    with pytest.raises(SchedulerError):
        s.add_schedule(daily("a"))
    assert s.remove_schedule("a") and not s.remove_schedule("a")
    assert s.get_schedule("a") is None


def test_due_schedule_runs_once_and_state_survives_a_restart(make_scheduler, clock, tmp_path):
    s = make_scheduler()
    s.add_schedule(daily())
    assert s.run_pending(wait=True) == []
    clock.set(datetime(2026, 1, 6, 3, 0, 1, tzinfo=UTC))
    assert s.run_pending(wait=True) == ["db"]
    assert s.run_pending(wait=True) == []
    sched = s.get_schedule("db")
    assert sched.statistics.runs == 1 and sched.statistics.successes == 1
    assert sched.last_result.ok and sched.last_result.trigger == "schedule"
    assert sched.next_run == datetime(2026, 1, 7, 3, 0, tzinfo=UTC)
    files = sorted((tmp_path / "backups").iterdir())
    assert [f.name for f in files] == ["db_20260106_030001.tar.gz"]
    assert parse_archive_name(files[0].name) == ("db", datetime(2026, 1, 6, 3, 0, 1, tzinfo=UTC))
    s.close()
    s2 = make_scheduler()
    again = s2.add_schedule(daily())
    assert again.statistics.runs == 1 and again.statistics.success_rate == 1.0
    assert again.next_run == datetime(2026, 1, 7, 3, 0, tzinfo=UTC)
    assert again.last_result.archive == str(files[0])
    assert len(s2.archives("db")) == 1


def test_three_days_of_downtime_give_one_catch_up_run(make_scheduler, clock):
    s = make_scheduler()
    s.add_schedule(daily())
    s.close()
    clock.set(datetime(2026, 1, 9, 10, 0, tzinfo=UTC))  # missed the 6th, 7th, 8th and 9th
    runner = FakeRunner(clock)
    s2 = make_scheduler(runner=runner)
    s2.add_schedule(daily())
    assert s2.run_pending(wait=True) == ["db"]
    assert s2.run_pending(wait=True) == []
    clock.advance(timedelta(hours=1))
    assert s2.run_pending(wait=True) == []
    sched = s2.get_schedule("db")
    assert runner.calls == 1
    assert sched.last_result.trigger == "catch-up"
    assert sched.statistics.skipped == 3
    assert sched.next_run == datetime(2026, 1, 10, 3, 0, tzinfo=UTC)


def test_missed_slot_beyond_the_grace_time_is_not_caught_up(make_scheduler, clock):
    runner = FakeRunner(clock)
    s = make_scheduler(runner=runner, misfire_grace_time=timedelta(hours=1))
    s.add_schedule(daily())
    clock.set(datetime(2026, 1, 6, 8, 0, tzinfo=UTC))  # 5 h late
    assert s.run_pending(wait=True) == []
    assert runner.calls == 0 and s.get_schedule("db").statistics.skipped == 1
    assert s.get_schedule("db").next_run == datetime(2026, 1, 7, 3, 0, tzinfo=UTC)
    clock.set(datetime(2026, 1, 7, 3, 30, tzinfo=UTC))  # 30 min late: within grace
    assert s.run_pending(wait=True) == ["db"]
    assert s.get_schedule("db").last_result.trigger == "catch-up"


def test_a_run_longer_than_its_interval_never_overlaps_itself(make_scheduler, clock):
    runner = FakeRunner(clock)
    runner.gate = threading.Event()
    s = make_scheduler(runner=runner)
    s.add_schedule(daily("h", cron="@hourly"))
    clock.set(datetime(2026, 1, 5, 13, 0, 5, tzinfo=UTC))
    assert s.run_pending() == ["h"]
    assert wait_for(lambda: runner.calls == 1)
    for _ in range(3):  # three more slots pass while it runs
        clock.advance(timedelta(hours=1))
        assert s.run_pending() == []
        assert s.is_running("h")
    assert runner.calls == 1
    runner.gate.set()
    assert wait_for(lambda: not s.is_running("h"))
    sched = s.get_schedule("h")
    assert runner.max_active == 1 and sched.statistics.runs == 1
    assert sched.statistics.skipped == 3
    assert sched.next_run == datetime(2026, 1, 5, 17, 0, tzinfo=UTC)
    runner.gate.clear()
    clock.set(datetime(2026, 1, 5, 17, 0, tzinfo=UTC))
    assert s.run_pending() == ["h"]
    with pytest.raises(LockedError):  # a manual run is refused while the schedule runs
        s.execute_backup("h")
    runner.gate.set()


@pytest.mark.parametrize("limit", [1, 2])
def test_at_most_concurrent_backups_jobs_run_at_once(make_scheduler, clock, limit):
    runner = FakeRunner(clock)
    runner.gate = threading.Event()
    s = make_scheduler(runner=runner, concurrent_backups=limit)
    for sid in ("a", "b", "c"):
        s.add_schedule(daily(sid))
    clock.set(datetime(2026, 1, 6, 3, 0, tzinfo=UTC))
    assert s.run_pending() == ["a", "b", "c"]
    assert wait_for(lambda: runner.active == limit)
    time.sleep(0.2)
    assert runner.active == limit
    runner.gate.set()
    assert wait_for(lambda: sum(x.statistics.runs for x in s.list_schedules()) == 3)
    assert runner.max_active == limit and runner.calls == 3


def test_failures_are_counted_and_notified(make_scheduler, clock):
    runner = FakeRunner(clock)
    runner.fail = {2}
    rec = Recorder()
    s = make_scheduler(runner=runner, notifiers=[rec])
    s.add_schedule(daily())
    for day in (6, 7, 8):
        clock.set(datetime(2026, 1, day, 3, 0, tzinfo=UTC))
        s.run_pending(wait=True)
    st = s.get_schedule("db").statistics
    assert (st.runs, st.successes, st.failures) == (3, 2, 1)
    assert st.success_rate == pytest.approx(2 / 3)
    assert st.last_failure == datetime(2026, 1, 7, 3, 0, tzinfo=UTC)
    kinds = [e.kind for e in rec.events]
    assert kinds == ["start", "success", "start", "failure", "start", "success"]
    failure = rec.events[3]
    assert "simulated failure of run 2" in failure.message
    assert failure.details["error_type"] == "BackupError" and failure.details["exit_code"] == 2


class Broken:
    name = "broken"

    def __init__(self, hang: float = 0.0) -> None:
        self.hang = hang

    def wants(self, event) -> bool:
        return True

    def send(self, event, timeout: float) -> None:
        if self.hang:
            time.sleep(self.hang)
        raise ConnectionRefusedError("no server")


def test_failing_or_hanging_notifiers_never_change_the_result(make_scheduler, clock):
    s = make_scheduler(notifiers=[Broken(), Broken(hang=30)])
    s.notifications.timeout = 0.3
    s.add_schedule(daily())
    clock.set(datetime(2026, 1, 6, 3, 0, tzinfo=UTC))
    t0 = time.monotonic()
    s.run_pending(wait=True)
    assert time.monotonic() - t0 < 5  # two events (start, success), each bounded
    assert s.get_schedule("db").last_result.ok
    assert s.notifications.failed["broken"] == 4  # both notifiers share the name
    m = s.get_metrics()
    assert m["notifications"]["failed"] == {"broken": 4}


def test_retention_runs_after_each_backup(make_scheduler, clock, tmp_path):
    s = make_scheduler(retention_policy=RetentionPolicy(keep_last=2))
    s.add_schedule(daily())
    for day in range(6, 11):
        clock.set(datetime(2026, 1, day, 3, 0, tzinfo=UTC))
        s.run_pending(wait=True)
    names = sorted(p.name for p in (tmp_path / "backups").iterdir())
    assert names == ["db_20260109_030000.tar.gz", "db_20260110_030000.tar.gz"]
    assert [Path(a.path).name for a in s.archives("db")] == names
    assert s.get_schedule("db").last_result.pruned == ["db_20260108_030000.tar.gz"]


def test_retention_never_prunes_the_archive_the_run_just_made(make_scheduler, clock):
    """A clock that ran a year ahead and was then set right: the older archives carry later
    times than the new one, and keep_last would keep them and delete the new archive (the
    run said OK, its archive gone)."""
    s = make_scheduler(retention_policy=RetentionPolicy(keep_last=2))
    s.add_schedule(daily())
    clock.set(datetime(2027, 6, 1, 3, 0, tzinfo=UTC))
    s.execute_backup("db")
    clock.advance(60)
    s.execute_backup("db")
    clock.set(datetime(2026, 6, 1, 3, 0, tzinfo=UTC))
    rec = s.execute_backup("db")
    assert rec.ok and Path(rec.archive).exists()
    assert rec.pruned == []  # keep_last keeps the two 2027 ones, the run keeps its own
    assert Path(rec.archive).name in [Path(a.path).name for a in s.archives("db")]


def test_a_clock_stepped_back_does_not_repeat_a_run(make_scheduler, clock):
    runner = FakeRunner(clock)
    s = make_scheduler(runner=runner)
    s.add_schedule(daily())
    clock.set(datetime(2026, 1, 6, 3, 0, tzinfo=UTC))
    s.run_pending(wait=True)
    clock.set(datetime(2026, 1, 6, 2, 0, tzinfo=UTC))  # NTP steps the clock back an hour
    s.run_pending(wait=True)
    clock.set(datetime(2026, 1, 6, 3, 30, tzinfo=UTC))
    s.run_pending(wait=True)
    assert runner.calls == 1


def test_a_clock_stepped_back_by_a_year_does_not_stop_the_backups(make_scheduler, clock):
    """The clock ran a year ahead, a run served the 2027 slot, then the clock was set right:
    the schedule waited for 2027-06-02 (no backup for a year); now it goes on by the clock."""
    runner = FakeRunner(clock)
    s = make_scheduler(runner=runner)
    s.add_schedule(daily())
    clock.set(datetime(2027, 6, 1, 3, 0, tzinfo=UTC))
    s.run_pending(wait=True)
    assert runner.calls == 1
    clock.set(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    s.run_pending(wait=True)
    assert runner.calls == 1 and s.get_schedule("db").next_run < datetime(2026, 6, 3, tzinfo=UTC)
    clock.set(datetime(2026, 6, 2, 3, 0, tzinfo=UTC))
    s.run_pending(wait=True)
    assert runner.calls == 2


def test_a_second_scheduler_on_the_same_state_dir_is_refused(make_scheduler):
    make_scheduler()
    with pytest.raises(LockedError) as info:
        make_scheduler()
    assert info.value.exit_code == 4


def test_stop_with_cancel_leaves_no_archive(make_scheduler, clock, tmp_path):
    runner = FakeRunner(clock)
    runner.gate = threading.Event()
    s = make_scheduler(runner=runner)
    s.add_schedule(daily())
    clock.set(datetime(2026, 1, 6, 3, 0, tzinfo=UTC))
    s.run_pending()
    assert wait_for(lambda: runner.calls == 1)
    assert s.stop(cancel=True, timeout=5)
    res = s.get_schedule("db").last_result
    assert not res.ok and res.error_type == "Cancelled" and res.exit_code == 130
    assert not list((tmp_path / "backups").glob("*.tar.gz"))


def test_stop_waits_for_the_running_archive(make_scheduler, clock, tmp_path):
    runner = FakeRunner(clock)
    runner.gate = threading.Event()
    s = make_scheduler(runner=runner)
    s.add_schedule(daily())
    clock.set(datetime(2026, 1, 6, 3, 0, tzinfo=UTC))
    s.run_pending()
    threading.Timer(0.3, runner.gate.set).start()
    assert s.stop(wait=True, timeout=5)
    assert s.get_schedule("db").last_result.ok
    assert len(list((tmp_path / "backups").glob("*.tar.gz"))) == 1


def test_a_run_interrupted_by_a_crash_is_recorded_and_caught_up(make_scheduler, clock):
    runner = FakeRunner(clock)
    runner.gate = threading.Event()
    s = make_scheduler(runner=runner)
    s.add_schedule(daily())
    clock.set(datetime(2026, 1, 6, 3, 0, tzinfo=UTC))
    s.run_pending()
    assert wait_for(lambda: runner.calls == 1)
    # simulate the daemon's death: drop the lock without finishing the run
    s._stopping.set()
    s._daemon_lock.release()
    clock.set(datetime(2026, 1, 6, 3, 10, tzinfo=UTC))
    runner2 = FakeRunner(clock)
    s2 = make_scheduler(runner=runner2)
    sched = s2.add_schedule(daily())
    assert sched.statistics.failures == 1
    assert sched.last_result.error_type == "Interrupted"
    assert s2.run_pending(wait=True) == ["db"]
    assert runner2.calls == 1 and sched.last_result.ok
    assert sched.next_run == datetime(2026, 1, 7, 3, 0, tzinfo=UTC)
    runner.gate.set()


def test_incremental_runs_use_the_newest_archive_as_parent(make_scheduler, clock):
    s = make_scheduler()
    s.add_schedule(daily(incremental=True, full_every=3))
    parents = []
    for day in range(6, 13):
        clock.set(datetime(2026, 1, day, 3, 0, tzinfo=UTC))
        s.run_pending(wait=True)
        parents.append(s.archives("db")[-1].parent)
    full = [p is None for p in parents]
    assert full == [True, False, False, True, False, False, True]


def test_the_loop_thread_runs_due_schedules(make_scheduler, clock):
    runner = FakeRunner(clock)
    s = make_scheduler(runner=runner, poll_interval=0.05)
    s.add_schedule(daily())
    s.start()
    assert s.get_metrics()["up"]
    clock.set(datetime(2026, 1, 6, 3, 0, tzinfo=UTC))
    s.wake()
    assert wait_for(lambda: s.get_schedule("db").statistics.runs == 1)
    assert s.stop(wait=True, timeout=5)
    assert runner.calls == 1 and s.get_schedule("db").statistics.successes == 1


def test_metrics_in_prometheus_text(make_scheduler, clock):
    s = make_scheduler()
    s.add_schedule(daily())
    clock.set(datetime(2026, 1, 6, 3, 0, tzinfo=UTC))
    s.run_pending(wait=True)
    text = s.prometheus_text()
    assert 'dsbackup_schedule_runs_total{schedule="db"} 1' in text
    assert 'dsbackup_schedule_successes_total{schedule="db"} 1' in text
    nxt = datetime(2026, 1, 7, 3, 0, tzinfo=UTC).timestamp()
    assert f'dsbackup_schedule_next_run_timestamp_seconds{{schedule="db"}} {nxt:.3f}' in text
    assert "# TYPE dsbackup_schedule_runs_total counter" in text


def test_changed_expression_recomputes_the_persisted_next_run(make_scheduler, clock):
    s = make_scheduler()
    s.add_schedule(daily(cron="0 3 1 * *"))  # monthly
    assert s.get_schedule("db").next_run == datetime(2026, 2, 1, 3, 0, tzinfo=UTC)
    s.close()
    s2 = make_scheduler()
    assert s2.add_schedule(daily(cron="@hourly")).next_run == datetime(2026, 1, 5, 13, 0,
                                                                       tzinfo=UTC)


def test_disabled_schedules_do_not_run_or_accumulate_misfires(make_scheduler, clock):
    runner = FakeRunner(clock)
    s = make_scheduler(runner=runner)
    sched = s.add_schedule(daily(enabled=False))
    assert sched.next_run is None
    clock.set(datetime(2026, 1, 9, 3, 30, tzinfo=UTC))
    assert s.run_pending(wait=True) == []
    sched.enabled = True
    assert s.run_pending(wait=True) == []  # no catch-up for the days it was disabled
    assert sched.next_run == datetime(2026, 1, 10, 3, 0, tzinfo=UTC) and runner.calls == 0


def test_runs_still_queued_when_the_scheduler_stops_are_not_started(make_scheduler, clock):
    runner = FakeRunner(clock)
    runner.gate = threading.Event()
    s = make_scheduler(runner=runner, concurrent_backups=1)
    s.add_schedule(daily("a"))
    s.add_schedule(daily("b"))
    clock.set(datetime(2026, 1, 6, 3, 0, tzinfo=UTC))
    assert s.run_pending() == ["a", "b"]
    assert wait_for(lambda: runner.calls == 1)
    threading.Timer(0.2, runner.gate.set).start()
    assert s.stop(wait=True, timeout=5)
    assert runner.calls == 1
    ran, queued = sorted(s.list_schedules(), key=lambda x: x.statistics.runs, reverse=True)
    assert ran.statistics.runs == 1 and queued.statistics.runs == 0
    assert queued.next_run == datetime(2026, 1, 6, 3, 0, tzinfo=UTC)  # served after a restart
    assert not s.is_running(queued.id)


@pytest.mark.parametrize("cron, tz, first, later", [
    # every minute of weekday working hours: the weekend gap is longer than twice the
    # longest gap period() sees in its first 2000 slots (a night)
    ("* 9-17 * * 1-5", "UTC", datetime(2026, 1, 9, 17, 59, 0, tzinfo=UTC),
     datetime(2026, 1, 10, 12, 0, tzinfo=UTC)),
    # every minute in Berlin across the autumn fall-back: the repeated wall hour fires once,
    # so after 02:59 CEST the next slot is an hour away
    ("* * * * *", "Europe/Berlin", datetime(2026, 10, 25, 0, 59, 0, tzinfo=UTC),
     datetime(2026, 10, 25, 1, 30, tzinfo=UTC)),
])
def test_dense_schedules_warn_of_no_clock_step(make_scheduler, clock, caplog, cron, tz, first,
                                               later):
    """The scheduler warned "more than twice its period ahead of the clock (stepped back?)"
    on every tick of a long natural gap between slots: the next run was the next slot by the
    clock, and nothing had stepped back. It warns only when a slot lies between now and the
    next run (the clock really went back past slots)."""
    runner = FakeRunner(clock)
    s = make_scheduler(runner=runner, time_zone=tz)
    s.add_schedule(daily(cron=cron))
    clock.set(first)
    s.run_pending(wait=True)
    assert runner.calls == 1
    nxt = s.get_schedule("db").next_run
    for minutes in range(0, 30, 5):
        clock.set(later + timedelta(minutes=minutes))
        s.run_pending(wait=True)
    assert "stepped back" not in caplog.text
    assert runner.calls == 1 and s.get_schedule("db").next_run == nxt
    clock.set(nxt)
    s.run_pending(wait=True)
    assert runner.calls == 2


def test_a_dense_schedule_still_sees_a_real_step_back(make_scheduler, clock, caplog):
    runner = FakeRunner(clock)
    s = make_scheduler(runner=runner)
    s.add_schedule(daily(cron="* * * * *"))
    clock.set(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    s.run_pending(wait=True)
    clock.set(datetime(2026, 3, 1, 11, 0, 30, tzinfo=UTC))  # an hour back
    s.run_pending(wait=True)
    assert "stepped back" in caplog.text
    assert s.get_schedule("db").next_run == datetime(2026, 3, 1, 11, 1, tzinfo=UTC)


def test_a_state_that_cannot_be_saved_stops_neither_backups_nor_their_notifications(
        make_scheduler, clock, tmp_path, caplog):
    """A full (or read-only) state disk: the save after a run raised OSError in the job
    thread ('Exception in thread backup-db' and a traceback), so the failure of that run was
    never notified, and the loop logged a traceback at every poll. Now one error line, the
    runs and their notifications go on, a health check says so, and the state is written
    whole once it can be again."""
    runner = FakeRunner(clock)
    runner.fail = {2, 3}
    rec = Recorder()
    s = make_scheduler(runner=runner, notifiers=[rec], min_free_ratio=None,
                       metrics_textfile=tmp_path / "metrics" / "dsbackup.prom")
    s.add_schedule(daily())
    clock.set(datetime(2026, 1, 6, 3, 0, tzinfo=UTC))
    s.run_pending(wait=True)
    state = tmp_path / "state" / "state.json"
    state.unlink()
    state.mkdir()  # the rename onto it fails (EISDIR), as a full disk's write would fail
    for day in (7, 8):
        clock.set(datetime(2026, 1, day, 3, 0, tzinfo=UTC))
        s.run_pending(wait=True)
    assert [e.kind for e in rec.events] == ["start", "success"] + ["start", "failure"] * 2
    assert s.get_schedule("db").statistics.failures == 2
    errors = [r.getMessage() for r in caplog.records if "state not saved" in r.getMessage()]
    assert len(errors) == 1 and str(state) in errors[0], errors  # once, naming the file
    assert not [r for r in caplog.records if r.exc_info]
    health = [r for r in s.run_health_checks() if r.check == "state"]
    assert len(health) == 1 and not health[0].ok
    assert "state not saved" in rec.events[-1].message or any(
        c["check"] == "state" for c in rec.events[-1].details["checks"])
    state.rmdir()
    (tmp_path / "metrics").write_text("a file where the textfile's directory belongs")
    s.start()  # the loop: a textfile it cannot write is one line too, not a traceback
    clock.set(datetime(2026, 1, 9, 3, 0, tzinfo=UTC))
    s.wake()
    assert wait_for(lambda: s.get_schedule("db").statistics.runs == 4)
    assert s.stop(wait=True, timeout=5)
    import json
    saved = json.loads(state.read_text())["schedules"]["db"]["statistics"]
    assert (saved["runs"], saved["failures"]) == (4, 2)
    assert s.state_error is None
    assert not [r for r in caplog.records if r.exc_info]
    assert len([r for r in caplog.records if "textfile" in r.getMessage()]) == 1


def test_a_backup_dir_gone_with_its_disk_is_not_made_again_elsewhere(make_scheduler, clock,
                                                                     tmp_path):
    """The disk of the backups not mounted: the run made the directory again (on the root
    file system, under the mount point), wrote the backup there, and retention dropped the
    absent archives from the catalog (never pruned once the disk was back)."""
    mount = tmp_path / "mnt" / "usb"
    backups = mount / "backups"
    rec = Recorder()
    s = make_scheduler(notifiers=[rec], default_backup_dir=backups,
                       retention_policy=RetentionPolicy(keep_last=1))
    s.add_schedule(daily())
    clock.set(datetime(2026, 1, 6, 3, 0, tzinfo=UTC))
    s.run_pending(wait=True)
    first = s.archives("db")[0].path
    gone = tmp_path / "unmounted"
    backups.parent.rename(gone)  # the disk's files go away with it
    clock.set(datetime(2026, 1, 7, 3, 0, tzinfo=UTC))
    s.run_pending(wait=True)
    last = s.get_schedule("db").last_result
    assert not last.ok and "backup directory is missing" in last.error, last.error
    assert "not mounted" in rec.events[-1].message
    assert not backups.exists() and not mount.exists()
    assert [a.path for a in s.archives("db")] == [first]  # still in the catalog
    gone.rename(backups.parent)  # mounted again
    clock.set(datetime(2026, 1, 8, 3, 0, tzinfo=UTC))
    s.run_pending(wait=True)
    assert s.get_schedule("db").last_result.ok
    assert not Path(first).exists()  # pruned by keep_last = 1, really
    assert [p.name for p in backups.iterdir()] == [Path(s.archives("db")[0].path).name]


def test_an_empty_backup_after_full_ones_reaches_those_who_want_failures(make_scheduler,
                                                                         clock):
    """The empty-source warning (nothing pruned) went only to services that want successes:
    with the usual on_failure-only e-mail, nobody heard that the store was empty."""
    from dataclasses import replace

    from dsbackup.scheduler.notify.email import build_message
    from dsbackup.scheduler.notify.event import wants_result

    class EmptyLater(FakeRunner):
        def run(self, *a, **kw):
            res = super().run(*a, **kw)
            return res if self.calls == 1 else replace(res, keys=0)

    rec = Recorder()
    s = make_scheduler(runner=EmptyLater(clock), notifiers=[rec],
                       retention_policy=RetentionPolicy(keep_last=1))
    s.add_schedule(daily())
    for day in (6, 7):
        clock.set(datetime(2026, 1, day, 3, 0, tzinfo=UTC))
        s.run_pending(wait=True)
    assert len(s.archives("db")) == 2  # the archive with records is kept
    event = rec.events[-1]
    assert event.kind == "success" and "the source is empty" in event.details["empty_source"]
    assert wants_result(event, on_success=False, on_failure=True)
    assert "SOURCE EMPTY" in build_message(event, "a@b.org", ["c@d.org"])["Subject"]
