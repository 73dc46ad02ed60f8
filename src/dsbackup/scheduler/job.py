"""One backup run of one schedule: make the archive, verify it, apply retention.

This layer does the work and reports what happened; it never raises and never touches the
scheduler's bookkeeping (see :mod:`dsbackup.scheduler.scheduler`).
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path

from dsbackup.archive.lineage import archive_encrypted, chain_depth, directory_archives
from dsbackup.errors import (
    EXIT_OK,
    EXIT_WARNING,
    BackupError,
    DsBackupError,
    IntegrityError,
    MissingParentError,
)
from dsbackup.scheduler.archives import free_archive_path
from dsbackup.scheduler.clock import Clock
from dsbackup.scheduler.config import RunRecord, ScheduledBackup
from dsbackup.scheduler.pruning import plan_retention
from dsbackup.scheduler.retention import (
    RetentionItem,
    RetentionPolicy,
    RetentionResult,
    forced_kept,
)
from dsbackup.scheduler.runner import BackupRunner, RunResult, VerifyResult
from dsbackup.scheduler.state import ArchiveEntry
from dsbackup.storage import as_location, delete, exists, is_file, set_aside

log = logging.getLogger(__name__)


@dataclass
class JobOutcome:
    record: RunRecord
    archives: list[ArchiveEntry]  # the schedule's catalog after this run
    retention: RetentionResult | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class ParentChoice:
    """The parent of the next run (None: a full backup) and, when an incremental was due but
    cannot be made safely, why a full backup is made instead (``fallback``). ``verified``:
    the parent just passed a verify that hashed every member of its chain it describes (the
    members the incremental's references resolve to among them); ``checked_chain``: the files
    of that chain, parent first, as that verify opened them."""

    parent: ArchiveEntry | None
    fallback: str | None = None
    verified: bool = False
    checked_chain: list[str] = field(default_factory=list)


def _chain_gap(newest: ArchiveEntry, archives: list[ArchiveEntry]) -> str | None:
    """Why the chain of ``newest`` is broken in the schedule's catalog, or None."""
    by_fp = {a.fingerprint: a for a in archives if a.fingerprint}
    cur, seen = newest, set()
    while cur.parent is not None and cur.parent in by_fp and cur.parent not in seen:
        seen.add(cur.parent)
        parent = by_fp[cur.parent]
        if not exists(parent.path):
            return (f"its parent chain is broken: {os.path.basename(parent.path)} (parent of "
                    f"{os.path.basename(cur.path)}) is missing")
        cur = parent
    return None


def _encryption_mismatch(schedule: ScheduledBackup, path: str) -> str | None:
    """Why the archive at `path` cannot be the parent of this schedule's next run as far as
    encryption goes, or None: an encrypted schedule's incremental on a plain parent would
    leave the records it refers to readable without a key there (encryption just turned on,
    or a plain archive put in the newest one's place); a plain schedule cannot make an
    incremental of an encrypted parent at all (encryption turned off). None too when the
    trailer cannot be read (the verify that follows says what is wrong)."""
    settings = schedule.backup_config
    spec = (settings.get("encryption") if isinstance(settings, Mapping)
            else getattr(settings, "encryption", None))
    try:
        encrypted = archive_encrypted(path)
    except (DsBackupError, OSError, ValueError):
        return None
    if encrypted == bool(spec):
        return None
    return ("encrypted, and this schedule's archives are not: a full backup" if encrypted else
            "not encrypted, and this schedule's archives are: a full backup (an incremental "
            "would leave the records it refers to readable without the key)")


def choose_parent(schedule: ScheduledBackup, archives: list[ArchiveEntry],
                  runner: BackupRunner | None = None) -> ParentChoice:
    """The parent for an incremental run, or a full backup when one is due or when the newest
    archive cannot serve as parent (missing, its chain broken, failing a quick verify).

    A full backup is due every ``full_every``-th run: when the chain of the newest archive is
    that long, or when ``full_every - 1`` runs (failed ones included) came after the last
    successful full backup.
    """
    if not schedule.incremental or not archives:
        return ParentChoice(None)
    newest = max(archives, key=lambda a: a.created)
    depth, _ = chain_depth(newest.parent, {a.fingerprint: a.parent for a in archives
                                           if a.fingerprint}, schedule.full_every)
    if (depth >= schedule.full_every
            or schedule.statistics.runs_since_full >= schedule.full_every - 1):
        return ParentChoice(None)
    name = os.path.basename(newest.path)
    if not exists(newest.path):
        return ParentChoice(None, f"the newest archive {name} is missing")
    gap = _chain_gap(newest, archives)
    if gap is not None:
        return ParentChoice(None, f"the newest archive {name} cannot be a parent: {gap}")
    mismatch = _encryption_mismatch(schedule, newest.path)
    if mismatch is not None:
        return ParentChoice(None, f"the newest archive {name} is {mismatch}")
    if runner is not None:
        try:
            report = runner.verify(as_location(newest.path), deep=False, sample=None)
        except Exception as exc:  # noqa: BLE001 - an unreadable parent means a full backup
            report = VerifyResult(False, [f"{type(exc).__name__}: {exc}"])
        if not report.ok:
            newest.verified = False
            if report.missing_parent:
                why = "a parent archive in its chain is missing"
            else:
                why = f"it failed a quick verify ({'; '.join(report.errors[:3]) or 'damaged'})"
            return ParentChoice(None, f"the newest archive {name} cannot be a parent: {why}")
        return ParentChoice(newest, verified=report.chain_checked,
                            checked_chain=list(report.checked_chain))
    return ParentChoice(newest)


def trust_parent(schedule: ScheduledBackup, runner: BackupRunner, choice: ParentChoice) -> bool:
    """Whether the incremental runs with trust_parent: its parent's chain was just verified
    member by member (so the backup's check would read the same bytes again), the schedule's
    settings do not say ``trust_parent = false`` (they win either way; ``true`` reaches the
    backup through them) and the runner takes the keyword."""
    settings = schedule.backup_config
    if not choice.verified or (isinstance(settings, Mapping) and "trust_parent" in settings):
        return False
    return _takes(runner.run, "trust_parent")


def _takes(method: object, name: str) -> bool:
    """Whether a runner's method takes the keyword `name` (runners may predate it)."""
    try:
        params = inspect.signature(method).parameters.values()  # type: ignore[arg-type]
    except (TypeError, ValueError):  # no signature to read: call it as before
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def trusted_chain(runner: BackupRunner, choice: ParentChoice) -> dict[str, list[str]]:
    """The keyword for the quick verify after an incremental on a parent whose chain was
    just verified member by member: the new archive's references resolve into exactly those
    members, so the verify compares them with the chain's entries without reading them again
    (it still reads every member of the new archive). Empty otherwise."""
    if choice.parent is None or not choice.verified or not choice.checked_chain:
        return {}
    if not _takes(runner.verify, "trusted_chain"):
        return {}
    return {"trusted_chain": list(choice.checked_chain)}


def retention_items(archives: list[ArchiveEntry]) -> list[RetentionItem]:
    """Archives as retention sees them: ids are file names (parents come from the files
    themselves, see :func:`prune_catalog`)."""
    return [RetentionItem(os.path.basename(a.path), a.created, a.verified) for a in archives]


def _state_parents(archives: list[ArchiveEntry]) -> dict[str, list[str]]:
    """Parents from the state's fingerprints, for archives whose file cannot be read: every
    archive carrying the parent fingerprint (twins are all kept); [] for a full backup."""
    by_fp: dict[str, list[str]] = {}
    for a in archives:
        if a.fingerprint:
            by_fp.setdefault(a.fingerprint, []).append(os.path.basename(a.path))
    return {os.path.basename(a.path): by_fp.get(a.parent, []) if a.parent else []
            for a in archives}


def prune_catalog(archives: list[ArchiveEntry], policy: RetentionPolicy, now: datetime,
                  tz: tzinfo, new: ArchiveEntry | None = None,
                  ) -> tuple[list[ArchiveEntry], RetentionResult, list[str]]:
    """Apply retention to a schedule's archives and delete the pruned files. The same code
    path as `dsbackup prune` (dsbackup.scheduler.pruning): an ancestor of a kept archive, or
    of any other archive in the same directories, is kept whatever its name. `new`, the
    archive the run has just made, is never pruned (nor, through it, its parents)."""
    dirs = sorted({as_location(a.path).parent for a in archives}, key=str)
    pool = sorted({*(as_location(a.path) for a in archives if is_file(a.path)),
                   *(p for d in dirs for p in directory_archives(d))}, key=str)
    result = plan_retention({"schedule": retention_items(archives)}, pool, policy, now, tz,
                            fallback_parents=_state_parents(archives),
                            newest=os.path.basename(new.path) if new else None)["schedule"]
    for unknown, n in sorted(forced_kept([result]).items()):
        log.warning("retention keeps %d archive(s) it would prune (rule maybe-parent): the "
                    "parent of %s cannot be read, and any of them may be it", n, unknown)
    pruned = result.pruned_ids
    kept, warnings = [], []
    for a in archives:
        if os.path.basename(a.path) not in pruned:
            kept.append(a)
            continue
        try:
            if exists(a.path):
                delete(a.path)  # a file, or an object
            log.info("pruned %s", a.path)
        except (OSError, DsBackupError) as exc:
            warnings.append(f"could not delete {a.path}: {exc}")
            kept.append(a)
    return kept, result, warnings


def _emptied(entry: ArchiveEntry, archives: list[ArchiveEntry]) -> str | None:
    """Why retention is not applied after a backup of no record when an archive of the
    schedule has records: a store not mounted (an empty mount point as flatfs or fsds
    directory) backs up as an empty archive, run after run, until retention has pruned every
    archive that held the data. None when the backup has records, or none ever had."""
    if entry.keys != 0:
        return None
    full = [a for a in archives if a.keys and a is not entry]
    if not full:
        return None
    last = max(full, key=lambda a: a.created)
    return (f"the source is empty (0 records), while {os.path.basename(last.path)} has "
            f"{last.keys}: a store not mounted?; retention not applied, the archives are kept "
            "until a backup has records again")


def _refuse_vanished_dir(backup_dir: Path, archives: list[ArchiveEntry]) -> None:
    """A backup directory that holds archives of the schedule and is gone now is a disk not
    mounted (or a directory deleted): creating it again would put the backups on another
    disk (the root file system, under the mount point) and make retention drop the absent
    archives from the catalog, never to prune them once the disk is back."""
    if backup_dir.exists():
        return
    where = os.path.abspath(backup_dir)
    made = [a for a in archives if os.path.dirname(os.path.abspath(a.path)) == where]
    if made:
        raise BackupError(
            f"{backup_dir}: the backup directory is missing, but {len(made)} archive(s) of "
            "this schedule were made there (a disk not mounted?); not creating it: mount "
            "the disk, or create the directory to start afresh")


def run_job(schedule: ScheduledBackup, archives: list[ArchiveEntry], *, runner: BackupRunner,
            clock: Clock, backup_dir: Path, policy: RetentionPolicy, tz: tzinfo,
            verify: bool, trigger: str, cancel: threading.Event) -> JobOutcome:
    started = clock.now()
    archives = list(archives)
    path: Path | None = None
    timer = None
    if schedule.timeout is not None:
        timer = threading.Timer(schedule.timeout.total_seconds(), cancel.set)
        timer.daemon = True
        timer.start()
    try:
        if isinstance(backup_dir, Path):  # an s3:// prefix needs no directory
            _refuse_vanished_dir(backup_dir, archives)
            backup_dir.mkdir(parents=True, exist_ok=True)
        path = free_archive_path(backup_dir, schedule.name, started)
        choice = choose_parent(schedule, archives, runner)
        res, choice = _make_archive(schedule, runner, path, cancel, choice)
        verified: bool | None = None
        if verify:
            report = runner.verify(res.path, deep=False, sample=None,
                                   **trusted_chain(runner, choice))
            if not report.ok:  # renamed (an object: copied, then deleted): not counted
                # as an archive by retention or prune any more (docs/SCHEDULER.md)
                where = set_aside(res.path, ".unverified")
                raise IntegrityError(f"{res.path}: new archive failed verification "
                                     f"({'; '.join(report.errors) or 'no detail'}); {where}")
            verified = True
        incomplete = getattr(res, "incomplete", None)  # files left out: a warning, exit 1
        entry = ArchiveEntry(path=str(res.path), created=res.created, fingerprint=res.fingerprint,
                             parent=res.parent, verified=bool(verified), size=res.size,
                             keys=res.keys)
        archives.append(entry)
        record = RunRecord(ok=True, started=started, finished=clock.now(), trigger=trigger,
                           archive=str(res.path), fingerprint=res.fingerprint, size=res.size,
                           keys=res.keys, verified=verified,
                           parent=choice.parent.path if choice.parent else None,
                           fallback=choice.fallback,
                           exit_code=EXIT_WARNING if choice.fallback or incomplete else EXIT_OK)
    except DsBackupError as exc:
        return JobOutcome(_failure(started, clock, trigger, path, exc, exc.exit_code), archives)
    except OSError as exc:  # the environment (backup_dir is a file, EIO ...): no traceback
        message = (f"{os.fsdecode(exc.filename)}: {exc.strerror}"
                   if exc.filename is not None and exc.strerror else None)
        return JobOutcome(_failure(started, clock, trigger, path, exc, 2, message), archives)
    except Exception as exc:  # noqa: BLE001 - a job never raises into the scheduler
        log.exception("backup of schedule %s crashed", schedule.id)
        return JobOutcome(_failure(started, clock, trigger, path, exc, 2), archives)
    finally:
        if timer is not None:
            timer.cancel()

    outcome = JobOutcome(record, archives)
    if choice.fallback:
        outcome.warnings.append(f"full backup instead of an incremental: {choice.fallback}")
    if incomplete:
        outcome.warnings.append(incomplete)
    emptied = _emptied(entry, archives)
    if emptied is not None:
        record.exit_code = EXIT_WARNING
        outcome.warnings.append(emptied)
        for w in outcome.warnings:
            log.warning("schedule %s: %s", schedule.id, w)
        return outcome
    try:
        kept, result, warnings = prune_catalog(archives, policy, record.finished, tz, entry)
        outcome.archives, outcome.retention = kept, result
        outcome.warnings += warnings
        record.pruned = sorted(result.pruned_ids)
    except Exception as exc:  # noqa: BLE001 - retention trouble never fails the backup
        log.exception("retention of schedule %s failed", schedule.id)
        outcome.warnings.append(f"retention failed: {exc}")
    for w in outcome.warnings:
        log.warning("schedule %s: %s", schedule.id, w)
    return outcome


def _make_archive(schedule: ScheduledBackup, runner: BackupRunner, path: Path,
                  cancel: threading.Event, choice: ParentChoice) -> tuple[RunResult, ParentChoice]:
    """Make the archive; an incremental that fails on its parent chain (a parent missing or
    damaged) is made again as a full backup, so a schedule never sticks on a broken chain."""
    parent = choice.parent
    trusted = {"trust_parent": True} if trust_parent(schedule, runner, choice) else {}
    try:
        return runner.run(schedule, path, cancel,
                          parent=as_location(parent.path) if parent else None, **trusted), \
            choice
    except (MissingParentError, IntegrityError) as exc:
        if parent is None or cancel.is_set():
            raise
        parent.verified = False
        what = ("a parent archive in its chain is missing" if isinstance(exc, MissingParentError)
                else f"the incremental backup failed ({type(exc).__name__})")
        log.warning("schedule %s: incremental on %s failed (%s); making a full backup",
                    schedule.id, parent.path, type(exc).__name__)
        fallback = ParentChoice(None, f"{os.path.basename(parent.path)} cannot be a parent: "
                                      f"{what}")
        return runner.run(schedule, path, cancel, parent=None), fallback


def _failure(started: datetime, clock: Clock, trigger: str, path: Path | None, exc: BaseException,
             exit_code: int, message: str | None = None) -> RunRecord:
    return RunRecord(ok=False, started=started, finished=clock.now(), trigger=trigger,
                     archive=str(path) if path else None,
                     error=message or str(exc) or type(exc).__name__,
                     error_type=type(exc).__name__, exit_code=exit_code)
