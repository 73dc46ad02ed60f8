"""Health checks: newest archive verified (quick + deep sample), staleness, free space."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from notifiers import Recorder

from dsbackup.scheduler import ScheduledBackup
from dsbackup.scheduler.cron import CronSchedule
from dsbackup.scheduler.health import HealthTimer, check_free_space, check_staleness

from .conftest import FakeRunner

UTC = timezone.utc


def test_health_checks_verify_the_newest_archive_quick_and_deep(make_scheduler, clock, tmp_path):
    runner = FakeRunner(clock)
    s = make_scheduler(runner=runner, health_deep_sample=0.25, min_free_ratio=None)
    s.add_schedule(ScheduledBackup(id="db", name="db", schedule="@daily", source="memory:"))
    for day in (6, 7):
        clock.set(datetime(2026, 1, day, tzinfo=UTC))
        s.run_pending(wait=True)
    runner.verifies.clear()
    results = s.run_health_checks()
    assert [(r.check, r.ok) for r in results] == [("verify", True), ("staleness", True),
                                                   ("free_space", True)]
    newest = s.archives("db")[-1]
    assert [(p.name, deep, sample) for p, deep, sample in runner.verifies] == [
        (newest.path.rsplit("/", 1)[1], False, None),
        (newest.path.rsplit("/", 1)[1], True, 0.25)]
    m = s.get_metrics()
    assert {(c["check"], c["ok"]) for c in m["health"]} == {
        ("verify", True), ("staleness", True), ("free_space", True)}
    assert m["free_bytes"] > 0
    assert 'dsbackup_health_check_ok{check="verify",subject="db"} 1' in s.prometheus_text()


def test_failed_health_checks_are_notified_and_clear_the_verified_flag(make_scheduler, clock):
    runner = FakeRunner(clock)
    rec = Recorder()
    s = make_scheduler(runner=runner, notifiers=[rec], min_free_bytes=1 << 60)
    s.add_schedule(ScheduledBackup(id="db", name="db", schedule="@daily", source="memory:"))
    clock.set(datetime(2026, 1, 6, tzinfo=UTC))
    s.run_pending(wait=True)
    assert s.archives("db")[-1].verified
    runner.verify_ok = False
    clock.advance(timedelta(days=5))  # no success for 5 days: stale
    results = s.run_health_checks()
    assert [(r.check, r.ok) for r in results] == [("verify", False), ("staleness", False),
                                                   ("free_space", False)]
    assert not s.archives("db")[-1].verified
    health = [e for e in rec.events if e.kind == "health"]
    assert len(health) == 1 and "3 health check(s) failed" in health[0].message
    assert len(health[0].details["checks"]) == 3


def test_a_missing_newest_archive_fails_the_check(make_scheduler, clock):
    s = make_scheduler(min_free_ratio=None)
    s.add_schedule(ScheduledBackup(id="db", name="db", schedule="@daily", source="memory:"))
    clock.set(datetime(2026, 1, 6, tzinfo=UTC))
    s.run_pending(wait=True)
    from pathlib import Path
    Path(s.archives("db")[-1].path).unlink()
    res = s.run_health_checks()[0]
    assert not res.ok and "missing" in res.message


def test_staleness_uses_twice_the_longest_gap_of_the_schedule():
    sched = ScheduledBackup(id="w", name="w", schedule="0 2 * * 1-5", source="memory:")
    cron = CronSchedule(sched.schedule)
    now = datetime(2026, 1, 12, 12, tzinfo=UTC)
    assert check_staleness(sched, cron, now).ok  # never run, no failure: not stale yet
    sched.statistics.last_success = now - timedelta(days=5, hours=23)
    assert check_staleness(sched, cron, now).ok  # within 2 x 3 days (weekend gap)
    sched.statistics.last_success = now - timedelta(days=6, hours=1)
    assert not check_staleness(sched, cron, now).ok
    sched.statistics.last_success = None
    sched.statistics.failures = 1
    assert not check_staleness(sched, cron, now).ok


def test_a_last_success_in_the_future_is_stale():
    """Backups made while the clock ran a year ahead: once it is set right no backup runs
    until the clock gets there again, and staleness said ok all that time."""
    sched = ScheduledBackup(id="d", name="d", schedule="@daily", source="memory:")
    cron = CronSchedule(sched.schedule)
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    sched.statistics.last_success = now + timedelta(days=365)
    res = check_staleness(sched, cron, now)
    assert not res.ok and "in the future" in res.message
    sched.statistics.last_success = now + timedelta(hours=1)  # a small step: not stale
    assert check_staleness(sched, cron, now).ok


def test_the_health_timer_survives_a_clock_stepped_back():
    ran = []
    timer = HealthTimer(timedelta(hours=1), lambda: ran.append(1))
    timer.tick(datetime(2027, 6, 1, tzinfo=UTC))
    timer.tick(datetime(2026, 6, 1, tzinfo=UTC))  # set right: due an hour from now, not 2027
    assert timer.next_due == datetime(2026, 6, 1, 1, tzinfo=UTC)
    timer.tick(datetime(2026, 6, 1, 1, 1, tzinfo=UTC))
    assert timer.join(5) and ran == [1]


def test_free_space_check_walks_up_to_an_existing_directory(tmp_path):
    res, free = check_free_space(tmp_path / "not" / "yet", None, 0.0)
    assert res.ok and free > 0
    res, _ = check_free_space(tmp_path, free * 4, None)
    assert not res.ok and "bytes free <" in res.message


def test_the_loop_runs_health_checks_every_interval(make_scheduler, clock):
    import time

    s = make_scheduler(health_check_interval=timedelta(minutes=5), poll_interval=0.05,
                       min_free_ratio=None)
    s.add_schedule(ScheduledBackup(id="db", name="db", schedule="@daily", source="memory:"))
    s.start()
    time.sleep(0.2)
    assert s.last_health_check is None  # the first check comes one interval after the start
    clock.advance(timedelta(minutes=6))
    s.wake()
    deadline = time.monotonic() + 5
    while s.last_health_check is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert s.stop(wait=True, timeout=5)
    assert s.last_health_check == clock.now()
    assert {r.check for r in s.health} == {"verify", "staleness", "free_space"}


def test_office_hours_every_minute_is_not_stale_over_the_weekend(make_scheduler, clock):
    """``* 9-17 * * 1-5``: a backup every minute of office hours. Its longest gap is Friday
    17:59 to Monday 09:00; the period counted only its first 2,000 runs (Monday to Thursday),
    said 15 h 1 min, and the health checks reported it stale (a 'health' failure sent) every
    weekend from Sunday 00:01 on."""
    rec = Recorder()
    s = make_scheduler(notifiers=[rec], min_free_ratio=None)
    clock.set(datetime(2026, 1, 9, 17, 58, 30, tzinfo=UTC))  # a Friday
    s.add_schedule(ScheduledBackup(id="office", name="office", schedule="* 9-17 * * 1-5",
                                   source="memory:"))
    clock.set(datetime(2026, 1, 9, 17, 59, 1, tzinfo=UTC))  # its last slot of the week
    s.run_pending(wait=True)
    assert s.get_schedule("office").statistics.successes == 1
    clock.set(datetime(2026, 1, 11, 18, 0, tzinfo=UTC))  # Sunday evening
    results = s.run_health_checks()
    assert [(r.check, r.ok) for r in results if r.check == "staleness"] == [
        ("staleness", True)], results
    assert not [e for e in rec.events if e.kind == "health"]
    clock.set(datetime(2026, 1, 15, 18, 0, tzinfo=UTC))  # Thursday, no success since Friday
    assert not [r for r in s.run_health_checks() if r.check == "staleness"][0].ok


def test_a_first_backup_that_hangs_is_stale(make_scheduler, clock):
    """A first backup hanging (a source on a dead mount, no timeout set): no success and no
    failure, so staleness said 'no run yet', ok, for as long as it hung: never an alert."""
    import threading

    runner = FakeRunner(clock)
    runner.gate = threading.Event()
    rec = Recorder()
    s = make_scheduler(runner=runner, notifiers=[rec], min_free_ratio=None)
    s.add_schedule(ScheduledBackup(id="db", name="db", schedule="@daily", source="memory:"))
    clock.set(datetime(2026, 1, 6, tzinfo=UTC))
    try:
        assert s.run_pending() == ["db"]
        clock.set(datetime(2026, 1, 7, 12, tzinfo=UTC))  # 1.5 days: within 2 x period
        assert [r for r in s.run_health_checks() if r.check == "staleness"][0].ok
        clock.set(datetime(2026, 1, 8, 1, tzinfo=UTC))
        res = [r for r in s.run_health_checks() if r.check == "staleness"][0]
        assert not res.ok and "still going" in res.message, res
        assert [e for e in rec.events if e.kind == "health"]
    finally:
        runner.gate.set()
