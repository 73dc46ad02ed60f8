"""apply_retention against an independent model of borg prune, plus the dsbackup extras."""

from __future__ import annotations

import random
import zlib
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsbackup.errors import ConfigError
from dsbackup.scheduler.cron import CronSchedule
from dsbackup.scheduler.retention import RetentionItem, RetentionPolicy, apply_retention

from .borg_oracle import borg_keep

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")

POLICIES = [
    {"daily": 7, "weekly": 4, "monthly": 6},
    {"last": 3, "hourly": 24, "daily": 7, "weekly": 4, "monthly": 12, "yearly": -1},
    {"hourly": 48},
    {"monthly": -1},
    {"weekly": 10, "yearly": 5},
    {"daily": 30, "monthly": 3, "yearly": 10},
]


def policy_of(d: dict[str, int]) -> RetentionPolicy:
    return RetentionPolicy(**{f"keep_{k}": v for k, v in d.items()})


def simulated_backups(cron: str, tz, start: datetime, days: int, seed: int) -> list[datetime]:
    """Start times of the successful runs over ``days``: downtime gaps of 1-5 days, ~7 % failed
    runs, a few seconds of jitter. ``"hourly"`` steps through UTC hours (so the repeated local
    hour of a fall-back day holds two backups); anything else is a cron expression in ``tz``."""
    rng = random.Random(seed)
    end = start + timedelta(days=days)
    if cron == "hourly":
        slots = [start + timedelta(hours=h) for h in range(days * 24)]
    else:
        slots = CronSchedule(cron, tz).runs_between(start, end)
    gaps = []
    for _ in range(days // 60):
        g0 = start + timedelta(days=rng.uniform(0, days))
        gaps.append((g0, g0 + timedelta(days=rng.uniform(1, 5))))
    out = []
    for t in slots:
        if any(a <= t < b for a, b in gaps) or rng.random() < 0.07:
            continue
        out.append(t + timedelta(seconds=rng.randint(0, 50)))
    return out


def kept_set(stamps: list[datetime], policy: RetentionPolicy, tz, now: datetime) -> set[datetime]:
    items = [RetentionItem(str(i), t) for i, t in enumerate(stamps)]
    res = apply_retention(items, policy, now, tz)
    return {items[int(d.id)].timestamp for d in res.kept}


@pytest.mark.parametrize("tz", [BERLIN, NEW_YORK], ids=["berlin", "new_york"])
@pytest.mark.parametrize("cron", ["hourly", "30 2 * * *"], ids=["hourly", "daily-0230"])
def test_two_years_one_shot_matches_borg(cron, tz):
    start = datetime(2024, 12, 30, tzinfo=UTC)
    stamps = simulated_backups(cron, tz, start, 730, seed=zlib.crc32(f"{cron} {tz}".encode()))
    assert len(stamps) > (600 if cron.startswith("30") else 14000)
    now = stamps[-1] + timedelta(minutes=5)
    for p in POLICIES if cron != "hourly" else POLICIES[:3]:
        assert kept_set(stamps, policy_of(p), tz, now) == borg_keep(stamps, p, tz), p


INCREMENTAL = [
    # (backups, days, policy): two years of daily runs; 40 days of hourly runs across the autumn
    # DST changes of both zones (Oct 26 in Berlin, Nov 2 in New York, 2025)
    ("30 2 * * *", datetime(2025, 1, 1, tzinfo=UTC), 730,
     {"last": 2, "daily": 7, "weekly": 4, "monthly": 12, "yearly": -1}),
    ("hourly", datetime(2025, 10, 12, tzinfo=UTC), 40,
     {"hourly": 24, "daily": 7, "weekly": 4, "monthly": 3}),
]


@pytest.mark.parametrize("tz", [BERLIN, NEW_YORK], ids=["berlin", "new_york"])
@pytest.mark.parametrize("cron,start,days,p", INCREMENTAL, ids=["daily-2y", "hourly-40d"])
def test_pruning_after_every_backup_matches_borg(tz, cron, start, days, p):
    """The scheduler prunes after each backup; so does the model (like borg prune run after
    each borg create), and the surviving sets agree after every step."""
    stamps = simulated_backups(cron, tz, start, days, seed=7)
    policy = policy_of(p)
    mine: list[datetime] = []
    model: list[datetime] = []
    for t in stamps:
        mine = sorted(kept_set(mine + [t], policy, tz, t))
        model = sorted(borg_keep(model + [t], p, tz))
        assert mine == model, t
    assert len(mine) >= sum(n for n in p.values() if n > 0) - 2


@settings(max_examples=100, deadline=None)
@given(
    offsets=st.lists(st.integers(0, 3 * 365 * 24 * 3600), min_size=0, max_size=60, unique=True),
    rules=st.fixed_dictionaries({k: st.integers(-1, 6) for k in
                                 ("last", "hourly", "daily", "weekly", "monthly", "yearly")}),
    zone=st.sampled_from([UTC, BERLIN, NEW_YORK]),
)
def test_random_histories_match_borg(offsets, rules, zone):
    base = datetime(2023, 1, 1, tzinfo=UTC)
    stamps = [base + timedelta(seconds=o) for o in offsets]
    policy = policy_of(rules)
    now = base + timedelta(days=4 * 365)
    got = kept_set(stamps, policy, zone, now)
    if policy.is_empty:
        assert got == set(stamps)
    else:
        assert got == borg_keep(stamps, rules, zone)


def _items(days: list[int], **flags) -> list[RetentionItem]:
    base = datetime(2026, 3, 1, 12, tzinfo=UTC)
    return [RetentionItem(f"d{d}", base + timedelta(days=d), **flags.get(f"d{d}", {}))
            for d in days]


def test_reasons_and_rule_numbers():
    items = _items(list(range(10)))
    res = apply_retention(items, RetentionPolicy(keep_last=2, keep_daily=3), items[-1].timestamp)
    by_id = {d.id: d for d in res.decisions()}
    assert [(by_id[i].rule, by_id[i].number) for i in ("d9", "d8", "d7", "d6", "d5")] == [
        ("last", 1), ("last", 2), ("daily", 1), ("daily", 2), ("daily", 3)]
    assert res.pruned_ids == {f"d{i}" for i in range(5)}
    assert all(d.reason == "not kept by any rule" for d in res.pruned)


def test_oldest_is_kept_when_a_rule_is_not_full():
    items = _items([0, 1, 2])
    res = apply_retention(items, RetentionPolicy(keep_daily=5), items[-1].timestamp)
    assert res.kept_ids == {"d0", "d1", "d2"}
    assert {d.id: d.rule for d in res.kept}["d0"] == "daily"
    items = _items([0, 0.1, 1])  # two on the first day: the older one is the "oldest"
    res = apply_retention(items, RetentionPolicy(keep_daily=5), items[-1].timestamp)
    assert {d.id: d.rule for d in res.kept}["d0"] == "daily[oldest]"


def test_max_age_prunes_old_backups_before_the_rules():
    items = _items(list(range(0, 100, 10)))
    now = items[-1].timestamp
    res = apply_retention(items, RetentionPolicy(keep_daily=30, max_age=timedelta(days=35)), now)
    assert res.kept_ids == {"d60", "d70", "d80", "d90"}
    assert {d.reason for d in res.pruned} == {"older than max_age"}
    only_age = apply_retention(items, RetentionPolicy(max_age=timedelta(days=35)), now)
    assert only_age.kept_ids == {"d60", "d70", "d80", "d90"}


def test_max_age_never_prunes_every_backup():
    """Backups stopped 40 days ago and a cron job prunes with max_age 35d: before, every
    archive was deleted, the last good one included."""
    items = _items(list(range(0, 30, 10)))
    now = items[-1].timestamp + timedelta(days=40)
    for policy in (RetentionPolicy(keep_daily=7, max_age=timedelta(days=35)),
                   RetentionPolicy(max_age=timedelta(days=35))):
        res = apply_retention(items, policy, now)
        assert res.kept_ids == {"d20"}
        assert {d.id: d.rule for d in res.kept}["d20"] == "newest"
        assert {d.reason for d in res.pruned} == {"older than max_age"}


def test_max_age_reaching_before_year_one_keeps_everything():
    items = _items(list(range(0, 100, 10)))
    now = items[-1].timestamp
    res = apply_retention(items, RetentionPolicy(max_age=timedelta(days=365 * 10000)), now)
    assert res.kept_ids == {i.id for i in items} and not res.pruned


@pytest.mark.parametrize("value", ["99999999999999d", float("nan"), float("inf"), 1e300])
def test_durations_out_of_range_are_config_errors(value):
    from dsbackup.scheduler.durations import parse_duration

    with pytest.raises(ConfigError):
        parse_duration(value)


def test_newest_verified_backup_is_never_pruned():
    items = _items([0, 1, 2, 3], d1={"verified": True})
    res = apply_retention(items, RetentionPolicy(keep_last=1, max_age=timedelta(days=1.5)),
                          items[-1].timestamp)
    assert res.kept_ids == {"d3", "d1"}
    assert {d.id: d.rule for d in res.kept}["d1"] == "newest-verified"


def test_parents_of_kept_incrementals_are_kept_transitively():
    items = _items([0, 1, 2, 3, 4], d2={"parent": "d1"}, d1={"parent": "d0"}, d4={"parent": "d3"})
    res = apply_retention(items, RetentionPolicy(keep_last=1), items[-1].timestamp)
    assert res.kept_ids == {"d4", "d3"}
    # 2026-03-01 is a Sunday: d0 is alone in its ISO week, d1..d5 share the next one
    items = _items([0, 1, 2, 5], d5={"parent": "d2"}, d2={"parent": "d1"})
    res = apply_retention(items, RetentionPolicy(keep_daily=1, keep_weekly=2),
                          items[-1].timestamp)
    assert res.kept_ids == {"d5", "d2", "d1", "d0"}
    rules = {d.id: d.rule for d in res.kept}
    assert (rules["d0"], rules["d1"], rules["d2"]) == ("weekly", "parent", "parent")


def test_empty_policy_keeps_everything_and_bad_values_are_refused():
    items = _items([0, 1])
    assert apply_retention(items, RetentionPolicy(), items[-1].timestamp).kept_ids == {"d0", "d1"}
    with pytest.raises(ConfigError):
        RetentionPolicy(keep_daily=-2)
    with pytest.raises(ConfigError):
        RetentionPolicy(max_age=timedelta(0))
    with pytest.raises(ValueError):
        apply_retention([RetentionItem("a", datetime(2026, 1, 1))], RetentionPolicy(keep_last=1),
                        datetime(2026, 1, 2, tzinfo=UTC))


def test_weeks_are_iso_weeks_in_local_time():
    # Sunday 2026-01-04 23:30 in Berlin is Sunday 22:30 UTC; Monday 00:30 Berlin is a new week.
    sun = datetime(2026, 1, 4, 22, 30, tzinfo=UTC)
    mon = datetime(2026, 1, 4, 23, 30, tzinfo=UTC)
    items = [RetentionItem("sun", sun), RetentionItem("mon", mon)]
    pol = RetentionPolicy(keep_weekly=1)
    assert apply_retention(items, pol, mon, BERLIN).kept_ids == {"mon"}
    assert apply_retention(items, RetentionPolicy(keep_weekly=2), mon, BERLIN).kept_ids == {
        "mon", "sun"}
    # in UTC both are on Sunday of ISO week 1: only one week with backups, the oldest joins
    assert apply_retention(items, RetentionPolicy(keep_weekly=2), mon, UTC).kept_ids == {
        "mon", "sun"}
    res = apply_retention(items, RetentionPolicy(keep_weekly=2), mon, UTC)
    assert {d.id: d.rule for d in res.kept}["sun"] == "weekly[oldest]"
