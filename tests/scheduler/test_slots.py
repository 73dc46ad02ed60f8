"""The timing rules alone (scheduler/slots.py): a punctual run, one catch-up run for many
missed slots, slots beyond the grace time skipped, slots that passed during a run skipped."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from dsbackup.scheduler.cron import CronSchedule
from dsbackup.scheduler.slots import DueSlots, passed_while_running

HOURLY = CronSchedule("0 * * * *", "UTC")
T = datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc)


def test_a_slot_served_on_time_is_a_schedule_run_and_skips_nothing():
    due = DueSlots.at(HOURLY, T, T + timedelta(seconds=5), grace=None)
    assert (due.run, due.trigger, due.count, due.skipped) == (True, "schedule", 1, 0)
    assert due.latest == T and due.next_run == T + timedelta(hours=1)


def test_a_late_single_slot_is_a_catch_up():
    due = DueSlots.at(HOURLY, T, T + timedelta(minutes=2), grace=None)
    assert (due.run, due.trigger, due.count, due.skipped) == (True, "catch-up", 1, 0)


def test_many_missed_slots_give_one_catch_up_of_the_latest():
    now = T + timedelta(hours=3, minutes=30)
    due = DueSlots.at(HOURLY, T, now, grace=timedelta(hours=1))
    assert (due.run, due.trigger, due.count, due.skipped) == (True, "catch-up", 4, 3)
    assert due.latest == T + timedelta(hours=3) and due.late == timedelta(minutes=30)
    assert due.next_run == T + timedelta(hours=4)


def test_slots_beyond_the_grace_time_are_all_skipped():
    now = T + timedelta(hours=2, minutes=30)
    due = DueSlots.at(HOURLY, T, now, grace=timedelta(minutes=10))
    assert (due.run, due.count, due.skipped) == (False, 3, 3)
    assert due.next_run == T + timedelta(hours=3)


def test_slots_that_passed_during_a_run_are_counted_and_the_next_is_after_now():
    assert passed_while_running(HOURLY, T + timedelta(hours=1), T + timedelta(minutes=50)) is None
    assert passed_while_running(HOURLY, None, T) is None
    assert passed_while_running(HOURLY, T, T + timedelta(hours=2, minutes=1)) == \
        (3, T + timedelta(hours=3))
