"""Retention: which backups to keep. Pure functions, no I/O.

Semantics are those of ``borg prune``:

- rules are applied in the order keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly,
  keep_yearly; each rule walks the backups from newest to oldest and keeps the newest backup of
  each period (hour, day, ISO week, month, year in local time) until it has kept N;
- a backup already kept by an earlier rule does not count for a later rule, but its period is
  used up (the next-older backup of that period is not taken instead);
- periods without backups do not count;
- if a rule runs out of backups before keeping N, it also keeps the oldest backup (borg ≥ 1.2);
- N = -1 means no limit; 0 disables the rule.

On top of borg:

- ``max_age``: backups older than ``now - max_age`` are not candidates for any rule (with no
  keep_* rule set, every backup within ``max_age`` is kept); when every backup is older, the
  newest is kept (rule ``newest``): max_age never prunes them all;
- the newest backup that passed verification is never pruned;
- after a clock stepped back, the backup that may have been written last although others
  carry later times: :func:`newest_written` (applied by dsbackup.scheduler.pruning);
- a kept incremental backup keeps its parent (and that parent's parent, …), whatever group
  (archive name) the parent is in: :func:`protect_ancestors`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any

from dsbackup.errors import ConfigError

RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


@dataclass(frozen=True)
class RetentionPolicy:
    """How many backups to keep per period. 0 disables a rule, -1 keeps every period."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    max_age: timedelta | None = None

    def __post_init__(self) -> None:
        for rule in RULES:
            n = getattr(self, f"keep_{rule}")
            if not isinstance(n, int) or isinstance(n, bool) or n < -1:
                raise ConfigError(f"keep_{rule} must be an integer >= -1, not {n!r}")
        if self.max_age is not None and self.max_age <= timedelta(0):
            raise ConfigError("max_age must be positive")

    @property
    def is_empty(self) -> bool:
        """True when no rule and no max_age is set (then everything is kept)."""
        return self.max_age is None and not any(getattr(self, f"keep_{r}") for r in RULES)


@dataclass(frozen=True)
class RetentionItem:
    """One backup as retention sees it. ``parent`` is the id of the backup it depends on."""

    id: str
    timestamp: datetime
    verified: bool = False
    parent: str | None = None


@dataclass(frozen=True)
class Decision:
    """Why a backup is kept (``rule`` and ``number``) or pruned (``rule`` is None)."""

    id: str
    timestamp: datetime
    keep: bool
    rule: str | None
    number: int
    reason: str
    forced_by: str | None = None  # (rule maybe-parent) the archive whose parent is unknown

    def to_json(self) -> dict[str, Any]:
        out = {"id": self.id, "timestamp": self.timestamp.isoformat(), "keep": self.keep,
               "rule": self.rule, "number": self.number, "reason": self.reason}
        if self.forced_by is not None:
            out["forced_by"] = self.forced_by
        return out


@dataclass
class RetentionResult:
    """Decisions, newest first."""

    kept: list[Decision] = field(default_factory=list)
    pruned: list[Decision] = field(default_factory=list)

    @property
    def kept_ids(self) -> set[str]:
        return {d.id for d in self.kept}

    @property
    def pruned_ids(self) -> set[str]:
        return {d.id for d in self.pruned}

    def decisions(self) -> list[Decision]:
        return sorted(self.kept + self.pruned, key=lambda d: (d.timestamp, d.id), reverse=True)


def _period_key(local: datetime, rule: str) -> tuple[int, ...]:
    if rule == "last":
        return (local.year, local.month, local.day, local.hour, local.minute, local.second)
    if rule == "hourly":
        return (local.year, local.month, local.day, local.hour)
    if rule == "daily":
        return (local.year, local.month, local.day)
    if rule == "weekly":
        iso = local.isocalendar()
        return (iso[0], iso[1])
    if rule == "monthly":
        return (local.year, local.month)
    return (local.year,)


def _item(obj: Any) -> RetentionItem:
    if obj.timestamp.tzinfo is None:
        raise ValueError(f"backup {obj.id!r}: timestamp must be timezone-aware")
    if isinstance(obj, RetentionItem):
        return obj
    ts = obj.timestamp
    return RetentionItem(str(obj.id), ts, bool(getattr(obj, "verified", False)),
                         getattr(obj, "parent", None))


def apply_retention(backups: Iterable[Any], policy: RetentionPolicy, now: datetime,
                    tz: tzinfo | None = None) -> RetentionResult:
    """Split ``backups`` into kept and pruned under ``policy`` at time ``now``.

    ``backups``: objects with ``id`` and aware ``timestamp`` (optional ``verified``, ``parent``).
    ``tz``: the zone whose local calendar defines hours, days, weeks; None = system local time.
    """
    items = sorted((_item(b) for b in backups), key=lambda i: (i.timestamp, i.id), reverse=True)
    by_id = {i.id: i for i in items}
    if len(by_id) != len(items):
        raise ValueError("backup ids must be unique")
    kept: dict[str, tuple[str, int, str]] = {}
    result = RetentionResult()
    if policy.is_empty:
        for i in items:
            result.kept.append(Decision(i.id, i.timestamp, True, "no-policy", 0,
                                        "no retention rule set: everything is kept"))
        return result

    cutoff = None
    if policy.max_age is not None:
        try:
            cutoff = now - policy.max_age
        except OverflowError:  # before year 1 (`--max-age 10000y`): no backup is that old
            cutoff = None
    candidates = [i for i in items if cutoff is None or i.timestamp >= cutoff]
    if items and not candidates:
        # every backup is older than max_age (backups stopped a while ago): the newest stays,
        # or a prune run from cron would delete the last backup there is
        kept[items[0].id] = ("newest", 1, "the newest backup: every backup is older than "
                                          "max_age, and max_age never prunes them all")
    local = {i.id: i.timestamp.astimezone(tz) for i in candidates}
    rules = [(r, getattr(policy, f"keep_{r}")) for r in RULES if getattr(policy, f"keep_{r}")]
    if not rules:
        for n, i in enumerate(candidates, 1):
            kept[i.id] = ("within", n, "younger than max_age")
    for rule, limit in rules:
        count = 0
        prev: tuple[int, ...] | None = None
        for i in candidates:
            key = _period_key(local[i.id], rule)
            if key == prev:
                continue
            prev = key
            if i.id in kept:
                continue
            count += 1
            kept[i.id] = (rule, count, f"newest of its {_PERIOD_NAMES[rule]}")
            if count == limit:
                break
        else:
            if limit > 0 and candidates and candidates[-1].id not in kept:
                kept[candidates[-1].id] = (f"{rule}[oldest]", count + 1,
                                           f"oldest backup, kept because keep_{rule} is not full")

    newest_verified = next((i for i in items if i.verified), None)
    if newest_verified is not None and newest_verified.id not in kept:
        kept[newest_verified.id] = ("newest-verified", 1, "newest backup that passed verification")

    for i in items:
        if i.id in kept:
            rule, number, reason = kept[i.id]
            result.kept.append(Decision(i.id, i.timestamp, True, rule, number, reason))
        elif cutoff is not None and i.timestamp < cutoff:
            result.pruned.append(Decision(i.id, i.timestamp, False, None, 0,
                                          "older than max_age"))
        else:
            result.pruned.append(Decision(i.id, i.timestamp, False, None, 0,
                                          "not kept by any rule"))
    protect_ancestors([result], {i.id: [i.parent] for i in items if i.parent is not None})
    return result


def keep_anyway(result: RetentionResult, id: str, rule: str, reason: str,
                forced_by: str | None = None) -> None:
    """Turn the pruned decision of `id` in `result`, if any, into a kept one."""
    for d in result.pruned:
        if d.id == id:
            result.pruned.remove(d)
            result.kept.append(Decision(d.id, d.timestamp, True, rule, 1, reason, forced_by))
            return


def forced_kept(results: Iterable[RetentionResult]) -> dict[str, int]:
    """Archive -> how many archives the rules would have pruned are kept only because its
    parent cannot be read (rule maybe-parent), any of them possibly being it."""
    out: dict[str, int] = {}
    for res in results:
        for d in res.kept:
            if d.forced_by is not None:
                out[d.forced_by] = out.get(d.forced_by, 0) + 1
    return out


def newest_written(items: Sequence[RetentionItem], parents: Mapping[str, Sequence[str]],
                   dated: Mapping[str, datetime], now: datetime) -> dict[str, str]:
    """The archives of one group that may have been written last although others carry
    later times (the clock was stepped back between them), id -> why: the rules, going by
    time, would keep the later-dated ones and delete these.

    - some archive is dated after `now`: it was written while the clock ran ahead, so the
      latest-dated one at or before `now` may be the last written;
    - an archive dated before its own parent (`dated`: every known archive's time) was
      written after it, whatever the times say: so were its descendants, the latest-dated
      of which may be the last written."""
    out: dict[str, str] = {}
    ahead = [i for i in items if i.timestamp > now]
    if ahead:
        by_now = max((i for i in items if i.timestamp <= now),
                     key=lambda i: (i.timestamp, i.id), default=None)
        if by_now is not None:
            out[by_now.id] = (f"the newest archive dated before now: {len(ahead)} carry later "
                              "times, written while the clock ran ahead (it was set back)")
    mine = {i.id: i for i in items}
    children: dict[str, list[str]] = {}
    for child, ps in parents.items():
        for q in ps:
            children.setdefault(q, []).append(child)
    for i in items:
        later = [q for q in parents.get(i.id, ()) if q in dated and dated[q] > i.timestamp]
        if not later:
            continue
        seen, todo = {i.id}, [i.id]
        while todo:
            for c in children.get(todo.pop(), ()):
                if c not in seen:
                    seen.add(c)
                    todo.append(c)
        last = max((mine[c] for c in seen if c in mine), key=lambda j: (j.timestamp, j.id))
        out.setdefault(last.id, f"written after {later[0]} (an ancestor of it), which "
                                "carries a later time (the clock was set back)")
    return out


def protect_ancestors(results: Sequence[RetentionResult],
                      parents: Mapping[str, Sequence[str]],
                      also_kept: Iterable[str] = ()) -> None:
    """Keep every ancestor of every kept backup, across all `results` (groups such as archive
    names): a pruned decision for an ancestor becomes a kept one whose reason names the child.

    `parents`: each backup's parent ids (several when equally good twins could serve, see
    dsbackup.archive.lineage); `also_kept`: ids that are not deleted by this run (other names,
    unmanaged archives) and whose ancestors must therefore stay too. Changes `results`.
    """
    pruned: dict[str, tuple[RetentionResult, Decision]] = {}
    for res in results:
        for d in res.pruned:
            pruned[d.id] = (res, d)
    kept_order = [d.id for res in results for d in sorted(res.kept, key=lambda d: (
        d.timestamp, d.id), reverse=True)] + [i for i in also_kept]
    done = set(kept_order)
    pending = list(reversed(kept_order))
    while pending:
        child = pending.pop()
        for parent in parents.get(child, ()):
            if parent in done:
                continue
            done.add(parent)
            pending.append(parent)
            if parent in pruned:
                res, d = pruned.pop(parent)
                res.pruned.remove(d)
                res.kept.append(Decision(d.id, d.timestamp, True, "parent", 1,
                                         f"parent of kept incremental backup {child}"))


_PERIOD_NAMES = {"last": "second", "hourly": "hour", "daily": "day", "weekly": "ISO week",
                 "monthly": "month", "yearly": "year"}
