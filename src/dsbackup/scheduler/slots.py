"""Which cron slot a schedule serves, and which it skips (pure: the scheduler applies it).

Timing rules (see docs/SCHEDULER.md):

- the next run comes from the cron expression, strictly after the slot just served;
- slots missed while the scheduler was down are served by ONE catch-up run, if the latest missed
  slot is within ``misfire_grace_time`` (None = always); the others count as skipped;
- a slot that comes while the previous run of the same schedule is still going is skipped;
- a run interrupted by the death of the daemon counts as a failure and is caught up on restart
  (the scheduler sets ``next_run`` back to its slot, then these rules apply).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from dsbackup.scheduler.cron import CronSchedule

# a slot served later than this after its time is a catch-up, not a punctual run
PUNCTUAL = timedelta(minutes=1)


@dataclass(frozen=True)
class DueSlots:
    """The slots of a schedule that have come (``next_run <= now``) and what to do."""

    count: int              # slots in [next_run, now]
    latest: datetime        # the latest of them: the one a run serves
    late: timedelta         # how long ago that was
    next_run: datetime      # the first slot after them (and after now)
    run: bool               # False: the latest is beyond the grace time, all are skipped
    trigger: str            # "schedule" or "catch-up"
    skipped: int            # slots counted as skipped

    @classmethod
    def at(cls, cron: CronSchedule, next_run: datetime, now: datetime,
           grace: timedelta | None) -> DueSlots:
        count, latest = cron.missed_slots(next_run, now)
        late = now - latest
        after = cron.next_after(max(now, latest))
        if grace is not None and late > grace:
            return cls(count, latest, late, after, run=False, trigger="", skipped=count)
        if count > 1 or late > PUNCTUAL:
            return cls(count, latest, late, after, run=True, trigger="catch-up",
                       skipped=count - 1)
        return cls(count, latest, late, after, run=True, trigger="schedule", skipped=0)


def passed_while_running(cron: CronSchedule, next_run: datetime | None, now: datetime
                         ) -> tuple[int, datetime] | None:
    """The slots that came while a run was going (skipped, not queued: no overlap) as
    (how many, the next slot after now); None when ``next_run`` is still ahead."""
    if next_run is None or next_run > now:
        return None
    count, latest = cron.missed_slots(next_run, now)
    return count, cron.next_after(max(now, latest))
