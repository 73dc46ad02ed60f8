"""Cron schedules on local wall-clock time, computed with croniter.

croniter enumerates wall-clock times (naive datetimes in the schedule's zone); this module turns
them into instants with these rules, so that a daily job runs exactly once per local day:

- a wall time that happens twice (clocks set back) fires once, at its first occurrence;
- a wall time that does not exist (clocks set forward) fires right after the gap, at the same
  distance from the start of the gap as it would have had (Python's ``fold=0`` rule);
- the next run is always strictly after the previous one, so two wall times that map to the
  same instant fire once, and a system clock stepped back never repeats a run.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from dsbackup.errors import ConfigError

ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def get_zone(name: str | tzinfo | None) -> tzinfo:
    """A tzinfo from an IANA name (``"Europe/Berlin"``), ``"UTC"``, or ``None`` (UTC)."""
    if name is None:
        return timezone.utc
    if isinstance(name, tzinfo):
        return name
    if not isinstance(name, str):
        raise ConfigError(f"a time zone is a name such as \"Europe/Berlin\", not {name!r}")
    if name.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"unknown time zone {name!r}") from exc


class CronSchedule:
    """A cron expression (5 fields, or the ``@hourly`` … ``@yearly`` aliases) in a time zone.

    croniter's optional 6th field (seconds) is accepted as well.
    """

    def __init__(self, expression: str, tz: str | tzinfo | None = None) -> None:
        if not isinstance(expression, str):
            raise ConfigError(f"a cron expression is a string, not {expression!r}")
        expr = " ".join(expression.split())
        fields = expr.split(" ")
        ok = expr.lower() in ALIASES if expr.startswith("@") else len(fields) in (5, 6)
        if not ok or not croniter.is_valid(expr):
            raise ConfigError(f"invalid cron expression {expression!r}")
        try:  # "0 0 30 2 *" (February 30th) is valid syntax but never fires
            croniter(expr, datetime(2001, 1, 1)).get_next(datetime)
        except (CroniterError, ValueError, OverflowError):
            raise ConfigError(f"cron expression {expression!r} never fires (no such date)"
                              ) from None
        self.expression = expr
        self.tz = get_zone(tz)
        self._period: timedelta | None = None
        self._cursor: tuple[datetime, croniter] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CronSchedule({self.expression!r}, {self.tz})"

    def _localize(self, wall: datetime) -> datetime:
        """Wall time (naive) -> aware UTC instant using fold=0 (first occurrence / after gap)."""
        return wall.replace(tzinfo=self.tz, fold=0).astimezone(timezone.utc)

    def next_after(self, after: datetime) -> datetime:
        """The first run strictly after ``after`` (aware), as an aware UTC datetime."""
        if after.tzinfo is None:
            raise ValueError("next_after needs a timezone-aware datetime")
        after_utc = after.astimezone(timezone.utc)
        with self._lock:
            if self._cursor is not None and self._cursor[0] == after_utc:
                it = self._cursor[1]  # continue the walk that produced ``after``
            else:
                wall = after_utc.astimezone(self.tz).replace(tzinfo=None, fold=0)
                # Start one hour earlier on the wall clock: after a fold, wall times that look
                # earlier may still be later instants; the loop discards all not after `after`.
                it = croniter(self.expression, wall - timedelta(hours=1))
            for _ in range(100_000):
                cand = self._localize(it.get_next(datetime))
                if cand > after_utc:
                    self._cursor = (cand, it)
                    return cand
        raise ConfigError(f"cron expression {self.expression!r} never fires")

    def runs_between(self, start: datetime, end: datetime) -> list[datetime]:
        """All runs in ``(start, end]``."""
        out = []
        t = self.next_after(start)
        while t <= end:
            out.append(t)
            t = self.next_after(t)
        return out

    def missed_slots(self, first: datetime, now: datetime,
                     max_scan: int = 10_000) -> tuple[int, datetime]:
        """(number of runs in ``[first, now]``, the latest of them); ``first`` is a run time
        <= ``now``. After a very long downtime (more than ``max_scan`` runs) the count stops
        at ``max_scan`` and the latest run is found from near ``now``."""
        count, latest = 1, first
        t = self.next_after(first)
        while t <= now and count < max_scan:
            count, latest = count + 1, t
            t = self.next_after(t)
        if t <= now:
            t = self.next_after(now - 2 * self.period())
            while t <= now:
                latest, t = t, self.next_after(t)
        return count, latest

    def period(self) -> timedelta:
        """The longest gap between consecutive runs over a year of runs from a fixed anchor.

        Used for staleness ("no success within 2 × period"): for ``0 2 * * 1-5`` it is 3 days,
        for ``* 9-17 * * 1-5`` (every minute of office hours) 2 days 15 h 1 min (Friday 17:59
        to Monday 09:00). The runs of a firing day are the same wall times every day (the
        minute, hour and second fields), so the year is walked a day at a time: the gap from
        each day's last run to the next run, and the widest gap between a day's wall times;
        a day whose UTC offset changes (DST) is walked run by run.
        """
        if self._period is None:
            self._period = self._longest_gap()
        return self._period

    def _day_times(self) -> list[int]:
        """The wall times of a firing day, in seconds after midnight, sorted."""
        fields = croniter(self.expression).expanded
        minutes, hours = fields[0], fields[1]
        seconds = fields[5] if len(fields) > 5 else [0]

        def full(values: list, n: int) -> list[int]:
            return list(range(n)) if "*" in values else sorted(int(v) for v in values)

        return sorted(h * 3600 + m * 60 + sec for h in full(hours, 24)
                      for m in full(minutes, 60) for sec in full(seconds, 60))

    def _first_run_after_day(self, last_wall: datetime, last: datetime) -> datetime:
        """The first run after ``last``, a day's last run at wall time ``last_wall``:
        croniter's next wall time when no UTC offset change lies between (``next_after``,
        which starts an hour early on the wall clock, costs 60 steps more for a job of every
        minute), else ``next_after``."""
        wall = croniter(self.expression, last_wall).get_next(datetime)
        cand = self._localize(wall)
        if cand > last and cand.astimezone(self.tz).utcoffset() == \
                last.astimezone(self.tz).utcoffset():
            return cand
        return self.next_after(last)

    def _longest_gap(self) -> timedelta:
        times = self._day_times()
        within = max((b - a for a, b in zip(times, times[1:])), default=0)
        longest = timedelta(seconds=within)
        last_wall = timedelta(seconds=times[-1])
        t = self.next_after(datetime(2001, 1, 1, tzinfo=timezone.utc))
        end = t + timedelta(days=366)
        for _ in range(1000):  # firing days of a year (366 at most), and a last step past it
            day = datetime.combine(t.astimezone(self.tz).date(), datetime.min.time())
            start = day.replace(tzinfo=self.tz).utcoffset()
            if start != (day + timedelta(days=1)).replace(tzinfo=self.tz).utcoffset():
                # a DST day: its gaps are not those of the wall times; walk its runs (a
                # day of more runs than this: the wall gap plus the shift bounds them)
                shift = abs(start - (day + timedelta(days=1)).replace(tzinfo=self.tz)
                            .utcoffset())
                if len(times) > 1500:
                    longest = max(longest, timedelta(seconds=within) + shift)
                else:
                    day_end = self._localize(day + timedelta(days=1))
                    nxt = self.next_after(t)
                    while nxt < day_end:
                        longest = max(longest, nxt - t)
                        t, nxt = nxt, self.next_after(nxt)
            last = max(t, self._localize(day + last_wall))
            nxt = self._first_run_after_day(day + last_wall, last)
            longest = max(longest, nxt - last)
            if nxt > end:
                break
            t = nxt
        return longest
