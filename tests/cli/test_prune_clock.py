"""`dsbackup prune` after the system clock was stepped back: archives written before the
step carry later times than the ones written after it. The rules go by time, so
``--keep-last 1`` kept a later-dated older archive and deleted the one written last; now the
archive that may be the last written is kept too (rule ``newest-written``): the latest-dated
one at or before now when some are dated in the future, and the latest of an archive dated
before its own parent and its descendants."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from dsbackup import datasets
from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig


def _backup(monkeypatch, src, path, when: datetime, parent=None) -> None:
    """A real backup whose manifest says it was created at `when` (the system clock then)."""
    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return when if tz is None else when.astimezone(tz)

    import dsbackup.engine.full as full
    import dsbackup.engine.incremental as incremental

    monkeypatch.setattr(full, "datetime", Clock)
    monkeypatch.setattr(incremental, "datetime", Clock)
    BackupManager(BackupConfig(chunk_size=32)).create_backup(f"lmdb:{src}", path, parent=parent)


@pytest.fixture
def src(tmp_path):
    s = tmp_path / "s"
    datasets.write_lmdb(str(s), ((b"/r/%05d" % i, b"v%d" % i) for i in range(300)))
    return s


def _prune(run_cli, d, *extra):
    r = run_cli("prune", d, "--keep-last", "1", "--json", *extra)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    return {x["id"]: x for x in out["groups"]["job"]}


def test_keep_last_after_the_clock_ran_ahead_and_was_set_back(tmp_path, src, run_cli,
                                                              monkeypatch):
    d = tmp_path / "b"
    d.mkdir()
    now = datetime.now(timezone.utc)
    ahead = now + timedelta(days=30)  # a bad RTC: a month ahead, then NTP set it right
    older = [d / f"job_{(ahead + timedelta(hours=h)):%Y%m%d_%H%M%S}.tar.gz" for h in (0, 1)]
    for h, p in enumerate(older):
        _backup(monkeypatch, src, p, ahead + timedelta(hours=h))
    last = d / f"job_{(now - timedelta(minutes=5)):%Y%m%d_%H%M%S}.tar.gz"
    _backup(monkeypatch, src, last, now - timedelta(minutes=5))  # written last
    got = _prune(run_cli, d, "--dry-run")
    assert got[last.name]["keep"], got
    assert got[last.name]["rule"] == "newest-written"
    assert "written while the clock ran ahead" in got[last.name]["reason"]
    assert got[older[1].name]["keep"] and not got[older[0].name]["keep"]
    r = run_cli("prune", d, "--keep-last", "1")
    assert r.returncode == 0, r.stderr
    assert last.exists() and older[1].exists() and not older[0].exists()
    assert "newest-written" in r.stdout


def test_keep_last_keeps_an_incremental_dated_before_its_parent(tmp_path, src, run_cli,
                                                                monkeypatch):
    """The clock has since caught up (nothing is dated in the future): the parent chain
    still says which was written after which."""
    d = tmp_path / "b"
    d.mkdir()
    t = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
    full = d / "job_20260301_120000.tar.gz"
    _backup(monkeypatch, src, full, t)
    with open_datastore(f"lmdb:{src}") as ds:
        ds.put(b"/r/00003", b"changed")
    inc1 = d / "job_20260301_100000.tar.gz"  # set back two hours
    _backup(monkeypatch, src, inc1, t - timedelta(hours=2), parent=full)
    with open_datastore(f"lmdb:{src}") as ds:
        ds.put(b"/r/00004", b"changed")
    inc2 = d / "job_20260301_103000.tar.gz"  # its child, written last
    _backup(monkeypatch, src, inc2, t - timedelta(hours=1, minutes=30), parent=inc1)
    got = _prune(run_cli, d, "--dry-run")
    assert got[inc2.name]["keep"] and got[inc2.name]["rule"] == "newest-written", got
    assert full.name in got[inc2.name]["reason"]
    assert got[inc1.name]["keep"] and got[inc1.name]["rule"] == "parent"
    assert run_cli("prune", d, "--keep-last", "1").returncode == 0
    assert inc2.exists() and inc1.exists() and full.exists()
    assert run_cli("restore", inc2, f"lmdb:{tmp_path / 'r'}").returncode == 0


def test_no_clock_step_changes_nothing(tmp_path, src, run_cli, monkeypatch):
    d = tmp_path / "b"
    d.mkdir()
    t = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
    names = []
    for h in range(3):
        p = d / f"job_{(t + timedelta(hours=h)):%Y%m%d_%H%M%S}.tar.gz"
        _backup(monkeypatch, src, p, t + timedelta(hours=h))
        names.append(p.name)
    got = _prune(run_cli, d, "--dry-run")
    assert [n for n in names if got[n]["keep"]] == [names[2]]
    assert got[names[2]]["rule"] == "last"
