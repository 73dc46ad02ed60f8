"""The scheduler, driven by a manual clock through long simulated periods (with downtime,
failures and DST changes), keeps exactly the archives borg's prune rules keep."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from dsbackup.scheduler import RetentionPolicy, ScheduledBackup
from dsbackup.scheduler.archives import parse_archive_name

from .borg_oracle import borg_keep
from .conftest import FakeRunner

UTC = timezone.utc

CASES = [
    # zone, cron, start, days, policy (borg names)
    ("Europe/Berlin", "30 2 * * *", datetime(2025, 1, 1, tzinfo=UTC), 730,
     {"daily": 7, "weekly": 4, "monthly": 12, "yearly": -1}),
    ("America/New_York", "30 1 * * *", datetime(2025, 1, 1, tzinfo=UTC), 730,  # 01:30 repeats
     {"last": 2, "daily": 10, "weekly": 6, "monthly": 6, "yearly": 3}),
    ("America/New_York", "0 * * * *", datetime(2025, 10, 25, tzinfo=UTC), 20,  # DST ends 11-02
     {"last": 3, "hourly": 24, "daily": 7, "weekly": 4, "monthly": 6}),
]


@pytest.mark.parametrize("zone,cron,start,days,p", CASES, ids=["berlin-daily-2y",
                                                               "new-york-daily-2y",
                                                               "new-york-hourly-20d"])
def test_simulated_history_keeps_what_borg_keeps(make_scheduler, clock, fast_dir, zone, cron,
                                                   start, days, p):
    rng = random.Random(1234)
    tz = ZoneInfo(zone)
    clock.set(start)
    runner = FakeRunner(clock)
    policy = RetentionPolicy(**{f"keep_{k}": v for k, v in p.items()})
    s = make_scheduler(runner=runner, base=fast_dir, retention_policy=policy, time_zone=zone,
                       verify_after_backup=False)
    sched = s.add_schedule(ScheduledBackup(id="sim", name="sim", schedule=cron,
                                           source="memory:"))
    end = start + timedelta(days=days)
    model: list[datetime] = []
    runs = 0
    while clock.now() < end:
        nxt = sched.next_run
        if rng.random() < 0.004:  # downtime of 1-4 days: one catch-up run afterwards
            clock.set(nxt + timedelta(days=rng.uniform(1, 4)))
        else:
            clock.set(nxt + timedelta(seconds=rng.randint(0, 40)))
        if rng.random() < 0.05:
            runner.fail.add(runner.calls + 1)
        before = sched.statistics.successes
        assert s.run_pending(wait=True) == ["sim"]
        runs += 1
        if sched.statistics.successes > before:
            model = sorted(borg_keep(model + [clock.now()], p, tz))
    on_disk = sorted(parse_archive_name(f.name)[1] for f in (fast_dir / "backups").iterdir())
    assert on_disk == [t.replace(microsecond=0) for t in model]
    assert sorted(a.created for a in s.archives("sim")) == model
    assert sched.statistics.failures > 0 and sched.statistics.skipped > 0
    assert runs == sched.statistics.runs
    # local days of the kept archives are distinct and DST days were crossed
    assert len({t.astimezone(tz).date() for t in model}) >= 7
