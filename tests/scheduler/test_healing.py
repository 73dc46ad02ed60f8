"""Schedules heal (issue 20, item 18): an incremental schedule whose newest archive is damaged
or whose chain lost a parent makes a full backup instead — and says so in its record, state and
notification — and failed runs count towards the full-every rule. Real archives of a real LMDB
store, made by the real BackupManager."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from notifiers import Recorder

from dsbackup import datasets
from dsbackup.errors import MissingParentError
from dsbackup.scheduler import ScheduledBackup
from dsbackup.scheduler.runner import ManagerRunner

from .conftest import FakeRunner

UTC = timezone.utc


@pytest.fixture
def lmdb_source(tmp_path: Path) -> Path:
    src = tmp_path / "ipfs-lmdb"
    datasets.write_lmdb(str(src), iter([(b"/blocks/K%05d" % i, os.urandom(80))
                                        for i in range(400)]))
    return src


def change_store(src: Path, day: int) -> None:
    """A few new records per day, so each incremental has something to carry."""
    from dsbackup.datastores import open_datastore

    ds = open_datastore(f"lmdb:{src}")
    try:
        for i in range(5):
            ds.put(b"/blocks/D%02d_%d" % (day, i), os.urandom(80))
    finally:
        ds.close()


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def run_days(s, clock, src: Path, days: range) -> list:
    records = []
    for day in days:
        change_store(src, day)
        clock.set(datetime(2026, 1, day, 3, 0, tzinfo=UTC))
        assert s.run_pending(wait=True) == ["db"]
        records.append(s.get_schedule("db").last_result)
        if records[-1].fallback:  # the state says so as well
            state = json.loads((s.config.state_path / "state.json").read_text())
            assert state["schedules"]["db"]["last_result"]["fallback"] == records[-1].fallback
    return records


def incremental_schedule(src: Path, full_every: int = 7) -> ScheduledBackup:
    return ScheduledBackup(id="db", name="ipfs", schedule="0 3 * * *", source=f"lmdb:{src}",
                           backup_config={"chunk_size": 40}, incremental=True,
                           full_every=full_every)


def assert_healed_once(records, recorder, tmp_path, reason: str) -> None:
    first, *rest = records
    assert all(r.ok for r in records), [r.error for r in records]
    assert first.parent is None and reason in first.fallback and first.exit_code == 1
    assert all(r.parent is not None for r in rest[:5])  # incrementals on the new full again
    assert all(r.fallback is None for r in rest)
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    events = [e for e in recorder.events if e.kind == "success"]
    healed = [e for e in events if e.details.get("fallback")]
    assert len(healed) == 1 and "a full backup instead of an incremental" in healed[0].message
    assert reason in healed[0].details["fallback"]
    text = json.dumps([e.to_json() for e in recorder.events]) + json.dumps(state)
    assert "--parent-dir" not in text


def test_damaged_newest_archive_makes_a_full_backup(make_scheduler, clock, lmdb_source,
                                                    tmp_path):
    rec = Recorder()
    s = make_scheduler(runner=ManagerRunner(), notifiers=[rec])
    s.add_schedule(incremental_schedule(lmdb_source))
    made = run_days(s, clock, lmdb_source, range(6, 9))  # full, incremental, incremental
    assert [r.parent is None for r in made] == [True, False, False]
    flip_byte(Path(made[-1].archive))
    records = run_days(s, clock, lmdb_source, range(9, 19))  # 10 runs: none may fail
    assert_healed_once(records, rec, tmp_path, "failed a quick verify")
    damaged = next(a for a in s.archives("db") if a.path == made[-1].archive)
    assert damaged.verified is False
    runner = ManagerRunner()
    assert runner.verify(Path(records[-1].archive), deep=True, sample=None).ok
    assert records[1].parent == records[0].archive  # the new chain starts at the new full


def test_missing_parent_makes_a_full_backup(make_scheduler, clock, lmdb_source, tmp_path):
    rec = Recorder()
    s = make_scheduler(runner=ManagerRunner(), notifiers=[rec])
    s.add_schedule(incremental_schedule(lmdb_source))
    made = run_days(s, clock, lmdb_source, range(6, 9))
    Path(made[1].archive).unlink()  # the parent of the newest archive
    records = run_days(s, clock, lmdb_source, range(9, 19))
    assert_healed_once(records, rec, tmp_path, "parent chain is broken")
    assert os.path.basename(made[1].archive) in records[0].fallback


def test_missing_parent_outside_the_catalog_is_found_by_verify(make_scheduler, clock,
                                                               lmdb_source, tmp_path):
    """A parent the state does not know (state rebuilt, archives moved): the quick verify of
    the newest archive opens its chain and finds the gap."""
    rec = Recorder()
    s = make_scheduler(runner=ManagerRunner(), notifiers=[rec])
    s.add_schedule(incremental_schedule(lmdb_source))
    made = run_days(s, clock, lmdb_source, range(6, 9))
    with s._lock:  # forget the middle archive in the catalog, and delete it
        s._archives["db"] = [a for a in s._archives["db"] if a.path != made[1].archive]
    Path(made[1].archive).unlink()
    records = run_days(s, clock, lmdb_source, range(9, 12))
    assert_healed_once(records, rec, tmp_path, "a parent archive in its chain is missing")


class ChainBreakingRunner(FakeRunner):
    """An incremental whose parent chain breaks while it runs (the parent passed the check)."""

    def run(self, schedule, archive_path, cancel_event, parent=None, *, trust_parent=False):
        if parent is not None and self.calls == 1:
            self.calls += 1
            raise MissingParentError(f"{archive_path}: parent archive x is missing: not found "
                                     "in /b (give its directory with --parent-dir)")
        return super().run(schedule, archive_path, cancel_event, parent,
                           trust_parent=trust_parent)


def test_an_incremental_failing_on_its_chain_is_made_again_as_full(make_scheduler, clock):
    runner = ChainBreakingRunner(clock)
    s = make_scheduler(runner=runner)
    s.add_schedule(ScheduledBackup(id="db", name="db", schedule="0 3 * * *", source="memory:",
                                   incremental=True, full_every=5))
    for day in (6, 7):
        clock.set(datetime(2026, 1, day, 3, 0, tzinfo=UTC))
        s.run_pending(wait=True)
    last = s.get_schedule("db").last_result
    assert last.ok and last.parent is None and "parent archive in its chain is missing" in \
        last.fallback
    assert "--parent-dir" not in last.fallback
    assert [a.parent for a in s.archives("db")] == [None, None]


def test_failed_runs_count_towards_full_every(make_scheduler, clock):
    runner = FakeRunner(clock)
    runner.fail = {2, 3}
    s = make_scheduler(runner=runner)
    sched = s.add_schedule(ScheduledBackup(id="db", name="db", schedule="0 3 * * *",
                                           source="memory:", incremental=True, full_every=3))
    outcomes = []
    for day in range(6, 13):
        clock.set(datetime(2026, 1, day, 3, 0, tzinfo=UTC))
        s.run_pending(wait=True)
        r = sched.last_result
        outcomes.append("fail" if not r.ok else ("full" if r.parent is None else "inc"))
    # run 1 full; runs 2 and 3 fail and count: run 4 is the 3rd after the full -> full again
    assert outcomes == ["full", "fail", "fail", "full", "inc", "inc", "full"]
    assert sched.statistics.runs_since_full == 0
    state = json.loads((s.config.state_path / "state.json").read_text())
    assert state["schedules"]["db"]["statistics"]["runs_since_full"] == 0
    clock.set(clock.now() + timedelta(days=1))
    s.run_pending(wait=True)
    assert sched.statistics.runs_since_full == 1


def test_run_once_reports_the_fallback(tmp_path, lmdb_source, run_cli):
    cfg = tmp_path / "s.toml"
    cfg.write_text(f"""
[scheduler]
backup_dir = "backups"
state_dir = "state"
health_check_interval = "off"
[[schedule]]
id = "db"
cron = "@daily"
source = "lmdb:{lmdb_source}"
incremental = true
[schedule.backup]
chunk_size = 40
""")
    outs = []
    for _ in range(2):
        r = run_cli("schedule", "run-once", "db", "--config", cfg, "--json", timeout=120)
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(r.stdout))
    assert outs[1]["parent"] == outs[0]["archive"]
    flip_byte(tmp_path / outs[1]["archive"])
    r = run_cli("schedule", "run-once", "db", "--config", cfg, "--json", timeout=120)
    out = json.loads(r.stdout)
    assert r.returncode == 1 and out["ok"] and out["exit_code"] == 1  # 1: finished, warnings
    assert out["parent"] is None and "failed a quick verify" in out["fallback"]
    assert "full backup instead of an incremental" in r.stderr
    lst = run_cli("schedule", "list", "--config", cfg, "--json")
    row = json.loads(lst.stdout)["schedules"][0]
    assert row["last_result"]["fallback"] == out["fallback"]
    human = run_cli("schedule", "list", "--config", cfg)
    assert "full backup instead of incremental" in human.stdout


def test_a_fallback_reaches_those_who_want_failures():
    from dsbackup.scheduler import NotificationConfig
    from dsbackup.scheduler.notify.base import Event
    from dsbackup.scheduler.notify.email import EmailNotifier, build_message
    from dsbackup.scheduler.notify.webhook import WebhookNotifier

    cfg = NotificationConfig(smtp_host="h", recipients=["ops@example.org"],
                             webhook_url="https://hooks.example.org/x", webhook_on_success=False)
    t = datetime(2026, 1, 6, tzinfo=UTC)
    plain = Event("success", "db", "db", t, "backup db succeeded", {"fallback": None})
    healed = Event("success", "db", "db", t, "backup db succeeded (...)",
                   {"fallback": "the newest archive x cannot be a parent: ..."})
    for n in (EmailNotifier(cfg), WebhookNotifier(cfg)):
        assert not n.wants(plain) and n.wants(healed)
    subject = build_message(healed, "a@b.org", ["ops@example.org"])["Subject"]
    assert subject == "[dsbackup] OK (FULL BACKUP INSTEAD OF INCREMENTAL): db"
    # so does a run that left files of the store out of its archive
    partial = Event("success", "db", "db", t, "backup db succeeded (with warnings: ...)",
                    {"fallback": None, "incomplete": "not backed up: 1 foreign files, ..."})
    for n in (EmailNotifier(cfg), WebhookNotifier(cfg)):
        assert n.wants(partial)
    subject = build_message(partial, "a@b.org", ["ops@example.org"])["Subject"]
    assert subject == "[dsbackup] OK (FILES NOT BACKED UP): db"


def test_health_check_names_a_missing_parent_without_cli_advice(make_scheduler, clock,
                                                                lmdb_source):
    s = make_scheduler(runner=ManagerRunner(), health_deep_sample=0)
    s.add_schedule(incremental_schedule(lmdb_source))
    made = run_days(s, clock, lmdb_source, range(6, 9))
    Path(made[1].archive).unlink()
    (verify,) = [r for r in s.run_health_checks() if r.check == "verify"]
    assert not verify.ok and "a parent archive in its chain is missing" in verify.message
    assert "--parent-dir" not in verify.message
