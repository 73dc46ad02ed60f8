"""A scheduled incremental reads its parent chain's members once: the quick verify before it
hashes every member the newest archive describes, so the backup's own check runs with
trust_parent and does not hash them again (docs/SCHEDULER.md "Incremental schedules"). Real
archives of a real LMDB store, made by the real BackupManager; member checks counted where the
archive reader hashes them."""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from dsbackup import datasets
from dsbackup.archive.reader import ArchiveReader
from dsbackup.engine.config import BackupConfig
from dsbackup.scheduler import ScheduledBackup
from dsbackup.scheduler.job import ParentChoice, trust_parent
from dsbackup.scheduler.runner import ManagerRunner
from dsbackup.scheduler.state import ArchiveEntry

from .conftest import FakeRunner
from .test_healing import change_store

UTC = timezone.utc


@pytest.fixture
def lmdb_source(tmp_path: Path) -> Path:
    src = tmp_path / "ipfs-lmdb"
    datasets.write_lmdb(str(src), iter([(b"/blocks/K%05d" % i, os.urandom(80))
                                        for i in range(400)]))
    return src


@pytest.fixture
def member_checks(monkeypatch) -> Counter:
    """(archive file name, chunk seq) -> how often that chunk's member was hashed: one by one
    (verify, check_member) or in bulk (the backup's check of the members its references
    resolve to, check_stored_members)."""
    seen: Counter = Counter()
    one, bulk = ArchiveReader._checked_member, ArchiveReader.check_stored_members

    def checked_member(self, i, *, catalog, keep):
        if not catalog:
            seen[(Path(str(self.path)).name, i)] += 1
        return one(self, i, catalog=catalog, keep=keep)

    def check_stored_members(self, seqs, *, catalog=False):
        for i in list(seqs):
            seen[(Path(str(self.path)).name, int(i))] += 1
        return bulk(self, seqs, catalog=catalog)

    monkeypatch.setattr(ArchiveReader, "_checked_member", checked_member)
    monkeypatch.setattr(ArchiveReader, "check_stored_members", check_stored_members)
    return seen


def schedule(src: Path, **settings) -> ScheduledBackup:
    return ScheduledBackup(id="db", name="ipfs", schedule="0 3 * * *", source=f"lmdb:{src}",
                           backup_config={"chunk_size": 40, **settings}, incremental=True,
                           full_every=7)


def run_day(s, clock, src: Path, day: int):
    change_store(src, day)
    clock.set(datetime(2026, 1, day, 3, 0, tzinfo=UTC))
    assert s.run_pending(wait=True) == ["db"]
    record = s.get_schedule("db").last_result
    assert record.ok, record.error
    return record


def reads_of(checks: Counter, archive: str) -> dict[int, int]:
    name = Path(archive).name
    return {seq: n for (a, seq), n in checks.items() if a == name}


def referenced(archive: str) -> set[int]:
    """The parent seqs the incremental `archive` refers to."""
    with ArchiveReader(archive) as r:
        return {r.entry(i).offset for i in range(r.chunk_count) if r.entry(i).in_parent}


def test_a_scheduled_incremental_reads_each_parent_member_once(make_scheduler, clock,
                                                               lmdb_source, member_checks):
    s = make_scheduler(runner=ManagerRunner(), verify_after_backup=False)
    s.add_schedule(schedule(lmdb_source))
    full = run_day(s, clock, lmdb_source, 6)
    member_checks.clear()
    inc = run_day(s, clock, lmdb_source, 7)
    assert inc.parent == full.archive and inc.fallback is None and inc.exit_code == 0
    with ArchiveReader(full.archive) as r:
        chunks = r.chunk_count
    refs = referenced(inc.archive)
    assert len(refs) >= chunks - 2 > 0  # the store changed in its first chunk only
    # the quick verify before the run hashed every member of the parent, the backup none
    assert reads_of(member_checks, full.archive) == dict.fromkeys(range(chunks), 1)
    assert ManagerRunner().verify(Path(inc.archive), deep=True, sample=None).ok


def test_verify_after_backup_does_not_read_the_parent_again(make_scheduler, clock,
                                                            lmdb_source, member_checks):
    """The default verify_after_backup reads the new archive's own members; its references
    resolve into the chain the quick verify before the run has just hashed, whose files are
    unchanged since, so each parent member is read once in the whole run (three times before
    the trusted backup, twice before the trusted verify)."""
    s = make_scheduler(runner=ManagerRunner())
    s.add_schedule(schedule(lmdb_source))
    full = run_day(s, clock, lmdb_source, 6)
    member_checks.clear()
    inc = run_day(s, clock, lmdb_source, 7)
    assert inc.verified and inc.parent == full.archive and inc.exit_code == 0
    refs = referenced(inc.archive)
    with ArchiveReader(full.archive) as r:
        chunks = r.chunk_count
    assert refs and reads_of(member_checks, full.archive) == dict.fromkeys(range(chunks), 1)
    with ArchiveReader(inc.archive) as r:
        own = {i for i in range(r.chunk_count) if not r.entry(i).in_parent}
    assert own and reads_of(member_checks, inc.archive) == dict.fromkeys(own, 1)


def test_a_chain_verified_on_another_day_is_read_again(make_scheduler, clock, lmdb_source,
                                                       member_checks):
    """The trust is the chain's files as the verify found them: a parent written since (here
    touched: same bytes, a new change time) is read again by the verify after the backup."""
    class TouchingRunner(ManagerRunner):
        def run(self, schedule, archive_path, cancel_event, parent=None, *, trust_parent=False):
            if parent is not None:
                os.utime(parent)
            return super().run(schedule, archive_path, cancel_event, parent,
                               trust_parent=trust_parent)

    s = make_scheduler(runner=TouchingRunner())
    s.add_schedule(schedule(lmdb_source))
    full = run_day(s, clock, lmdb_source, 6)
    member_checks.clear()
    inc = run_day(s, clock, lmdb_source, 7)
    assert inc.verified and inc.parent == full.archive
    refs = referenced(inc.archive)
    reads = reads_of(member_checks, full.archive)
    assert refs and {seq for seq, n in reads.items() if n == 2} == refs


@pytest.mark.parametrize("explicit", [False, True])
def test_the_trust_parent_key_wins(make_scheduler, clock, lmdb_source, member_checks,
                                   explicit):
    """``trust_parent = false`` in the schedule's settings keeps the backup's own read (each
    referenced member hashed twice); ``true`` skips it, as the automatic choice does."""
    s = make_scheduler(runner=ManagerRunner(), verify_after_backup=False)
    s.add_schedule(schedule(lmdb_source, trust_parent=explicit))
    full = run_day(s, clock, lmdb_source, 6)
    member_checks.clear()
    inc = run_day(s, clock, lmdb_source, 7)
    refs = referenced(inc.archive)
    reads = reads_of(member_checks, full.archive)
    twice = {seq for seq, n in reads.items() if n == 2}
    assert twice == (set() if explicit else refs) and refs
    assert all(n == 1 for seq, n in reads.items() if seq not in twice)


class KeywordlessRunner:
    """A runner written before trust_parent: its run takes no such keyword."""

    def __init__(self) -> None:
        self.inner = ManagerRunner()
        self.verify, self.inspect = self.inner.verify, self.inner.inspect

    def run(self, schedule, archive_path, cancel_event, parent=None):
        return self.inner.run(schedule, archive_path, cancel_event, parent)


def test_a_runner_without_the_keyword_runs_as_before(make_scheduler, clock, lmdb_source,
                                                     member_checks):
    s = make_scheduler(runner=KeywordlessRunner(), verify_after_backup=False)
    s.add_schedule(schedule(lmdb_source))
    full = run_day(s, clock, lmdb_source, 6)
    member_checks.clear()
    inc = run_day(s, clock, lmdb_source, 7)
    assert inc.parent == full.archive and inc.exit_code == 0
    refs = referenced(inc.archive)
    assert {seq for seq, n in reads_of(member_checks, full.archive).items() if n == 2} == refs


def test_a_damaged_grandparent_member_still_heals_with_a_full_backup(make_scheduler, clock,
                                                                      lmdb_source, tmp_path):
    """A member of the full backup that the newest incremental refers to (through its
    parent) is damaged: the quick verify before the run reads it, the run is a full backup,
    with a warning and exit code 1, and the schedule goes on with incrementals on it."""
    runner = ManagerRunner()
    s = make_scheduler(runner=runner, verify_after_backup=False)
    s.add_schedule(schedule(lmdb_source))
    full, inc1, inc2 = (run_day(s, clock, lmdb_source, d) for d in (6, 7, 8))
    assert inc2.parent == inc1.archive and inc1.parent == full.archive
    with ArchiveReader(full.archive) as r:
        mid = r.chunk_count // 2
        e = r.entry(mid)
    with ArchiveReader(inc2.archive) as r:  # inc2 reaches that member through inc1
        held = {(h.path.name, seq) for h, seq in (r.locate(i) for i in range(r.chunk_count))}
    assert (Path(full.archive).name, mid) in held
    data = bytearray(Path(full.archive).read_bytes())
    data[e.offset + e.length // 2] ^= 0xFF
    Path(full.archive).write_bytes(bytes(data))
    healed = run_day(s, clock, lmdb_source, 9)
    assert healed.parent is None and healed.exit_code == 1
    assert "failed a quick verify" in healed.fallback and Path(inc2.archive).name in \
        healed.fallback
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["schedules"]["db"]["last_result"]["fallback"] == healed.fallback
    assert next(a for a in s.archives("db") if a.path == inc2.archive).verified is False
    nxt = run_day(s, clock, lmdb_source, 10)
    assert nxt.parent == healed.archive and nxt.fallback is None and nxt.exit_code == 0
    assert runner.verify(Path(nxt.archive), deep=True, sample=None).ok


def test_trust_is_given_only_after_a_verify_of_the_whole_chain():
    newest = ArchiveEntry(path="/b/x.tar.gz", created=datetime(2026, 1, 6, tzinfo=UTC),
                          fingerprint="f", parent=None)
    sched = ScheduledBackup(id="db", name="db", schedule="@daily", source="memory:",
                            incremental=True)
    runner = FakeRunner()
    assert trust_parent(sched, runner, ParentChoice(newest, verified=True))
    # a verify that did not hash the chain (no key: the sealed walk), or none at all
    assert not trust_parent(sched, runner, ParentChoice(newest, verified=False))
    assert not trust_parent(sched, runner, ParentChoice(None))
    assert not trust_parent(sched, KeywordlessRunner(), ParentChoice(newest, verified=True))
    for value in (False, True):  # the key decides; true reaches the backup by the settings
        sched.backup_config = {"trust_parent": value}
        assert not trust_parent(sched, runner, ParentChoice(newest, verified=True))
    sched.backup_config = BackupConfig()  # an object's default False is no choice made
    assert trust_parent(sched, runner, ParentChoice(newest, verified=True))


def test_a_fake_runner_is_told_to_trust_after_a_verify_of_the_chain(make_scheduler, clock):
    class ChainVerifyingRunner(FakeRunner):
        def verify(self, path, deep, sample):
            res = super().verify(path, deep, sample)
            res.chain_checked = res.ok
            return res

    runner = ChainVerifyingRunner(clock)
    s = make_scheduler(runner=runner, verify_after_backup=False)
    s.add_schedule(ScheduledBackup(id="db", name="db", schedule="0 3 * * *", source="memory:",
                                   incremental=True, full_every=3))
    for day in range(6, 10):
        clock.set(datetime(2026, 1, day, 3, 0, tzinfo=UTC))
        s.run_pending(wait=True)
    assert runner.trusted == [False, True, True, False]  # full, inc, inc, full


@pytest.fixture
def passphrase(tmp_path: Path, monkeypatch) -> Path:
    from dsbackup.archive import crypto

    monkeypatch.setenv(crypto.TEST_LOG2_N_ENV, "14")
    monkeypatch.setattr(crypto, "_keyring", [])  # the process's keyring, this test's own
    (tmp_path / "pass").write_text("parent-reads-passphrase\n")
    return tmp_path / "pass"


def test_an_encrypted_schedule_reads_each_parent_member_once(make_scheduler, clock,
                                                             lmdb_source, member_checks,
                                                             passphrase):
    """The schedule's key is in the runner's keyring: its quick verify opens the chain."""
    s = make_scheduler(runner=ManagerRunner(), verify_after_backup=False)
    s.add_schedule(schedule(lmdb_source, encryption={"passphrase_file": str(passphrase)}))
    full = run_day(s, clock, lmdb_source, 6)
    member_checks.clear()
    inc = run_day(s, clock, lmdb_source, 7)
    assert inc.parent == full.archive and inc.exit_code == 0
    reads = reads_of(member_checks, full.archive)
    assert reads and set(reads.values()) == {1}


def test_a_verify_without_the_key_gives_no_trust(make_scheduler, clock, lmdb_source,
                                                 member_checks, passphrase):
    """A BackupConfig carrying the key is not in the keyring: the quick verify before the run
    is the sealed walk, which does not read the parents, so the backup reads them itself."""
    from dsbackup.archive import crypto

    cfg = BackupConfig(chunk_size=40, encryption=crypto.load_passphrase_file(passphrase))
    s = make_scheduler(runner=ManagerRunner(), verify_after_backup=False)
    s.add_schedule(ScheduledBackup(id="db", name="ipfs", schedule="0 3 * * *",
                                   source=f"lmdb:{lmdb_source}", backup_config=cfg,
                                   incremental=True, full_every=7))
    full = run_day(s, clock, lmdb_source, 6)
    member_checks.clear()
    inc = run_day(s, clock, lmdb_source, 7)
    assert inc.parent == full.archive and inc.exit_code == 0
    reads = reads_of(member_checks, full.archive)
    assert reads and set(reads.values()) == {1}  # by the backup's check only
    with ArchiveReader(inc.archive, key=cfg.encryption) as r:
        refs = {r.entry(i).offset for i in range(r.chunk_count) if r.entry(i).in_parent}
    assert set(reads) == refs


class DamagingRunner(ManagerRunner):
    """Damages the middle chunk member of the parent after the quick verify passed, just
    before a trusted incremental reads it."""

    def run(self, schedule, archive_path, cancel_event, parent=None, *, trust_parent=False):
        if parent is not None and trust_parent:
            with ArchiveReader(parent) as r:
                e = r.entry(r.chunk_count // 2)
            data = bytearray(parent.read_bytes())
            data[e.offset + e.length // 2] ^= 0xFF
            parent.write_bytes(bytes(data))
        return super().run(schedule, archive_path, cancel_event, parent,
                           trust_parent=trust_parent)


def test_a_parent_damaged_after_the_verify_fails_the_verify_after_backup(make_scheduler, clock,
                                                                         lmdb_source):
    """The trusted backup does not see it; the new archive's own quick verify does (exit 3,
    kept as .unverified), and the next run heals with a full backup."""
    s = make_scheduler(runner=DamagingRunner())
    s.add_schedule(schedule(lmdb_source))
    full = run_day(s, clock, lmdb_source, 6)
    change_store(lmdb_source, 7)
    clock.set(datetime(2026, 1, 7, 3, 0, tzinfo=UTC))
    s.run_pending(wait=True)
    failed = s.get_schedule("db").last_result
    assert not failed.ok and failed.exit_code == 3 and "failed verification" in failed.error
    assert Path(failed.archive + ".unverified").is_file() and not Path(failed.archive).exists()
    healed = run_day(s, clock, lmdb_source, 8)
    assert healed.parent is None and healed.exit_code == 1
    assert Path(full.archive).name in healed.fallback
    assert "failed a quick verify" in healed.fallback
