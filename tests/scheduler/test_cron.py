"""Cron timing: expressions, aliases, time zones, DST transitions, clock steps."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from dsbackup.errors import ConfigError
from dsbackup.scheduler.cron import CronSchedule

UTC = timezone.utc


def local_runs(expr: str, zone: str, start: datetime, n: int) -> list[datetime]:
    c = CronSchedule(expr, zone)
    out, t = [], start
    for _ in range(n):
        t = c.next_after(t)
        out.append(t.astimezone(ZoneInfo(zone)))
    return out


@pytest.mark.parametrize("expr", ["not cron", "61 * * * *", "* * *", "@often", "* * * * * * *"])
def test_invalid_expressions_are_refused(expr):
    with pytest.raises(ConfigError):
        CronSchedule(expr)


def test_unknown_zone_is_refused():
    with pytest.raises(ConfigError):
        CronSchedule("@daily", "Mars/Olympus_Mons")


@pytest.mark.parametrize("alias,expected", [
    ("@hourly", datetime(2026, 5, 17, 11, 0, tzinfo=UTC)),
    ("@daily", datetime(2026, 5, 18, 0, 0, tzinfo=UTC)),
    ("@weekly", datetime(2026, 5, 24, 0, 0, tzinfo=UTC)),  # Sunday
    ("@monthly", datetime(2026, 6, 1, tzinfo=UTC)),
    ("@yearly", datetime(2027, 1, 1, tzinfo=UTC)),
])
def test_aliases(alias, expected):
    assert CronSchedule(alias).next_after(datetime(2026, 5, 17, 10, 15, tzinfo=UTC)) == expected


def test_next_run_comes_from_the_expression_not_from_now_plus_interval():
    c = CronSchedule("*/15 9-17 * * 1-5", "Europe/Berlin")
    # Friday 17:50 Berlin (15:50 UTC): next is Monday 09:00 Berlin
    nxt = c.next_after(datetime(2026, 5, 15, 15, 50, tzinfo=UTC))
    assert nxt == datetime(2026, 5, 18, 7, 0, tzinfo=UTC)
    assert c.next_after(nxt) == datetime(2026, 5, 18, 7, 15, tzinfo=UTC)
    # Friday 17:45 to Monday 09:00, an hour longer over the weekend clocks go back
    assert c.period() == timedelta(days=2, hours=16, minutes=15)


@pytest.mark.parametrize("zone,spring,autumn", [
    ("Europe/Berlin", datetime(2026, 3, 27, tzinfo=UTC), datetime(2026, 10, 22, tzinfo=UTC)),
    ("America/New_York", datetime(2026, 3, 6, tzinfo=UTC), datetime(2026, 10, 29, tzinfo=UTC)),
])
@pytest.mark.parametrize("expr", ["30 2 * * *", "0 2 * * *", "0 1 * * *", "59 2 * * *"])
def test_daily_job_runs_once_per_local_day_across_both_transitions(zone, spring, autumn, expr):
    for start in (spring, autumn):
        runs = local_runs(expr, zone, start, 8)
        days = [r.date() for r in runs]
        assert days == sorted(set(days)), runs  # one run per day
        assert all(b - a > timedelta(hours=20) for a, b in zip(runs, runs[1:]))
        assert (days[-1] - days[0]).days == 7  # and no day without a run


def test_spring_forward_gap_runs_after_the_gap():
    runs = local_runs("30 2 * * *", "Europe/Berlin", datetime(2026, 3, 28, 12, tzinfo=UTC), 2)
    assert runs[0].isoformat() == "2026-03-29T03:30:00+02:00"  # 02:30 does not exist that day


def test_fall_back_ambiguous_time_runs_at_first_occurrence_only():
    runs = local_runs("30 1 * * *", "America/New_York", datetime(2026, 10, 31, 12, tzinfo=UTC), 2)
    assert runs[0].isoformat() == "2026-11-01T01:30:00-04:00"  # EDT, the first 01:30
    assert runs[1].isoformat() == "2026-11-02T01:30:00-05:00"


def test_hourly_job_across_transitions_never_runs_twice_at_one_instant():
    for start in (datetime(2026, 3, 28, 22, tzinfo=UTC), datetime(2026, 10, 24, 22, tzinfo=UTC)):
        c = CronSchedule("0 * * * *", "Europe/Berlin")
        runs = c.runs_between(start, start + timedelta(hours=8))
        assert runs == sorted(set(runs))
        walls = [r.astimezone(c.tz).replace(tzinfo=None) for r in runs]
        assert len(walls) == len(set(walls))  # a wall-clock time that repeats fires once


def test_asking_from_inside_the_repeated_hour_does_not_repeat_a_run():
    c = CronSchedule("30 2 * * *", "Europe/Berlin")
    first = c.next_after(datetime(2026, 10, 24, 12, tzinfo=UTC))
    assert first == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST
    # 02:45 CET (second pass through 02:xx) -> the next day, not 02:30 CET again
    assert c.next_after(datetime(2026, 10, 25, 1, 45, tzinfo=UTC)) == datetime(
        2026, 10, 26, 1, 30, tzinfo=UTC)


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError):
        CronSchedule("@daily").next_after(datetime(2026, 1, 1))


def _longest_gap_run_by_run(expr: str, zone: str) -> timedelta:
    """What ``period`` means, the slow way: every run of the year from its anchor."""
    c = CronSchedule(expr, zone)
    t = c.next_after(datetime(2001, 1, 1, tzinfo=UTC))
    end, longest = t + timedelta(days=366), timedelta(0)
    while t <= end:
        nxt = c.next_after(t)
        longest, t = max(longest, nxt - t), nxt
    return longest


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "Australia/Lord_Howe"])
@pytest.mark.parametrize("expr", ["0 * * * *", "30 2 * * *", "*/20 1-3 * * *", "0 2 * * 1-5",
                                  "15 0,2,23 * * *", "*/45 2 * 3,10 *", "0 0 29 2 *"])
def test_period_is_the_longest_gap_of_the_year(expr, zone):
    assert CronSchedule(expr, zone).period() == _longest_gap_run_by_run(expr, zone)


@pytest.mark.parametrize("expr,gap", [
    ("* 9-17 * * 1-5", timedelta(days=2, hours=15, minutes=1)),  # Friday 17:59 -> Monday 09:00
    ("*/5 * * * 1-5", timedelta(days=2, minutes=5)),
    ("*/2 * 1-3 * *", timedelta(days=28, minutes=2)),            # January 3rd -> February 1st
    ("* * 1,2 1 *", timedelta(days=363, minutes=1)),              # January 2nd -> next year
    ("* * * * *", timedelta(minutes=1)),
])
def test_period_of_dense_irregular_schedules(expr, gap):
    """The period counted only the first 2,000 runs: 15 h 1 min for office hours every minute
    (the weekend unseen), 1 min for every minute of two days a year; the staleness check then
    failed every weekend, and every day, of such schedules."""
    assert CronSchedule(expr).period() == gap


def test_missed_slots_after_weeks_down_find_the_latest_over_a_weekend():
    """More than 10,000 missed runs: the latest is searched from ``now - 2 x period``, which
    found none on a Sunday with the underestimated period and reported a run weeks old as
    the latest (so the grace time refused the catch-up of Friday's slot)."""
    c = CronSchedule("* 9-17 * * 1-5")
    first = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # a Monday
    now = datetime(2026, 2, 15, 12, 0, tzinfo=UTC)  # a Sunday, six weeks later
    count, latest = c.missed_slots(first, now)
    assert count == 10_000
    assert latest == datetime(2026, 2, 13, 17, 59, tzinfo=UTC)
