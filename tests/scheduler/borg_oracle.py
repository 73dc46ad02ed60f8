"""An independent model of ``borg prune``, written from borg's documentation (``borg help
prune``): "--keep-daily 7 means to keep the latest backup on each day, up to 7 most recent days
with backups (days without backups do not count). The rules are applied from secondly to yearly,
and backups selected by previous rules do not count towards those of later rules. [...] Dates and
times are interpreted in the local timezone [...] weeks go from Monday to Sunday. [...] a negative
number of archives to keep means that there is no limit. [...] borg will retain the oldest
archive if any of the [...] rules was not otherwise able to meet its retention target."

Unlike the implementation (one newest-to-oldest walk per rule), this groups the backups of each
rule into periods with strftime patterns and works on sets.
"""

from __future__ import annotations

from datetime import datetime, tzinfo

PATTERNS = [("last", "%Y-%m-%d %H:%M:%S"), ("hourly", "%Y-%m-%d %H"), ("daily", "%Y-%m-%d"),
            ("weekly", "%G-%V"), ("monthly", "%Y-%m"), ("yearly", "%Y")]


def borg_keep(timestamps: list[datetime], policy: dict[str, int], tz: tzinfo) -> set[datetime]:
    if not timestamps:
        return set()
    kept: set[datetime] = set()
    for rule, pattern in PATTERNS:
        n = policy.get(rule, 0)
        if n == 0:
            continue
        newest_of: dict[str, datetime] = {}
        for ts in timestamps:
            period = ts.astimezone(tz).strftime(pattern)
            if period not in newest_of or ts > newest_of[period]:
                newest_of[period] = ts
        fresh = sorted((t for t in newest_of.values() if t not in kept), reverse=True)
        chosen = fresh if n < 0 else fresh[:n]
        kept.update(chosen)
        if n > 0 and len(chosen) < n:
            kept.add(min(timestamps))
    return kept
