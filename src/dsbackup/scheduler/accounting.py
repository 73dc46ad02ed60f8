"""How a finished (or interrupted) run changes its schedule's statistics and last result."""

from __future__ import annotations

from dsbackup.scheduler.config import RunRecord, ScheduledBackup


def account_run(schedule: ScheduledBackup, rec: RunRecord) -> None:
    stats = schedule.statistics
    stats.runs += 1
    # every run counts towards the next full backup, failed ones too; a full resets it
    stats.runs_since_full = 0 if rec.ok and rec.parent is None else stats.runs_since_full + 1
    stats.total_duration += rec.duration
    if rec.ok:
        stats.successes += 1
        stats.last_success = rec.finished
    else:
        stats.failures += 1
        stats.last_failure = rec.finished
    schedule.last_run = rec.started
    schedule.last_result = rec
