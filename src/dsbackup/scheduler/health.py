"""Health checks: the newest archive of each schedule verifies, backups are not stale, and the
backup directory has free space; :class:`HealthTimer` runs them periodically."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from dsbackup.scheduler.config import ScheduledBackup, SchedulerConfig
from dsbackup.scheduler.cron import CronSchedule
from dsbackup.scheduler.runner import BackupRunner
from dsbackup.scheduler.state import ArchiveEntry

log = logging.getLogger(__name__)


@dataclass
class CheckResult:
    check: str  # "verify", "staleness", "free_space"
    subject: str  # schedule id, or the directory for free_space
    ok: bool
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "subject": self.subject, "ok": self.ok,
                "message": self.message}


def check_newest_archive(schedule: ScheduledBackup, archives: list[ArchiveEntry],
                         runner: BackupRunner, deep_sample: float) -> CheckResult:
    """Quick verify of the newest archive, then a deep verify of a sample of its chunks.

    Sets the entry's ``verified`` flag to the outcome.
    """
    if not archives:
        return CheckResult("verify", schedule.id, True, "no archive yet")
    newest = max(archives, key=lambda a: a.created)
    path = Path(newest.path)
    if not path.exists():
        newest.verified = False
        return CheckResult("verify", schedule.id, False, f"{path}: newest archive is missing")
    try:
        report = runner.verify(path, deep=False, sample=None)
        if report.ok and deep_sample > 0:
            report = runner.verify(path, deep=True, sample=deep_sample)
    except Exception as exc:  # noqa: BLE001 - a broken archive is a failed check, not a crash
        newest.verified = False
        return CheckResult("verify", schedule.id, False, f"{path}: {exc}")
    newest.verified = report.ok
    if report.ok:
        return CheckResult("verify", schedule.id, True, f"{path.name} verified")
    detail = "; ".join(report.errors) or f"bad chunks {report.bad_chunks}"
    if report.missing_parent:  # the engine's text suggests --parent-dir, which schedules lack
        detail = ("a parent archive in its chain is missing (the next run makes a full "
                  "backup)" if schedule.incremental else "a parent archive is missing")
    return CheckResult("verify", schedule.id, False, f"{path}: verification failed: {detail}")


def check_staleness(schedule: ScheduledBackup, cron: CronSchedule, now: datetime,
                    running_since: datetime | None = None) -> CheckResult:
    """Stale: no success within twice the schedule's period (its longest gap between runs);
    with no success yet, a failure, or a run going for longer than that (a first backup
    hanging on a dead mount has no last success to age)."""
    stats = schedule.statistics
    limit = 2 * cron.period()
    if stats.last_success is None:
        if stats.failures:
            return CheckResult("staleness", schedule.id, False, "no backup has succeeded yet")
        if running_since is not None and now - running_since > limit:
            return CheckResult("staleness", schedule.id, False,
                               f"no backup has succeeded yet; the run started "
                               f"{running_since.isoformat()} is still going, longer than "
                               f"2 x period ({limit})")
        return CheckResult("staleness", schedule.id, True, "no run yet")
    age = now - stats.last_success
    if -age > limit:  # else not stale for as long as the clock lags behind
        return CheckResult("staleness", schedule.id, False,
                           f"last success {stats.last_success.isoformat()} is in the future "
                           f"(the clock was stepped back?)")
    if age > limit:
        return CheckResult("staleness", schedule.id, False,
                           f"last success {stats.last_success.isoformat()} is older than "
                           f"2 x period ({limit})")
    return CheckResult("staleness", schedule.id, True, f"last success {age} ago")


def check_free_space(directory: Path, min_free_bytes: int | None,
                     min_free_ratio: float | None) -> tuple[CheckResult, int | None]:
    """Free space of the file system holding ``directory`` against the thresholds (a bucket
    has no free space to check: ok)."""
    if not isinstance(directory, Path):
        return CheckResult("free_space", str(directory), True, "object storage"), None
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError as exc:
        return CheckResult("free_space", str(directory), False, f"cannot stat: {exc}"), None
    problems = []
    if min_free_bytes is not None and usage.free < min_free_bytes:
        problems.append(f"{usage.free} bytes free < {min_free_bytes}")
    if min_free_ratio is not None and usage.total and usage.free / usage.total < min_free_ratio:
        problems.append(f"{usage.free / usage.total:.1%} free < {min_free_ratio:.1%}")
    if problems:
        return CheckResult("free_space", str(directory), False, "; ".join(problems)), usage.free
    return CheckResult("free_space", str(directory), True, f"{usage.free} bytes free"), usage.free


def run_checks(schedules: list[ScheduledBackup], archives: Callable[[str], list[ArchiveEntry]],
               crons: Mapping[str, CronSchedule], runner: BackupRunner,
               config: SchedulerConfig, now: datetime,
               running_since: Mapping[str, datetime] | None = None,
               ) -> tuple[list[CheckResult], int | None]:
    """Every check: the newest archive and staleness of each schedule, free space of each
    backup directory. Returns the results and the least free bytes of those directories.
    ``running_since``: the start of each schedule's run going now."""
    results: list[CheckResult] = []
    dirs: set[Path] = set()
    for sched in schedules:
        results.append(check_newest_archive(sched, archives(sched.id), runner,
                                            config.health_deep_sample))
        if sched.enabled:
            results.append(check_staleness(sched, crons[sched.id], now,
                                           (running_since or {}).get(sched.id)))
        dirs.add(sched.backup_dir or config.default_backup_dir)
    free = None
    for d in sorted(dirs or {config.default_backup_dir}, key=str):
        res, f = check_free_space(d, config.min_free_bytes, config.min_free_ratio)
        results.append(res)
        free = f if free is None or (f is not None and f < free) else free
    return results, free


class HealthTimer:
    """Starts ``run`` every ``interval`` (the first time one interval after the first tick)
    in a background thread, never two at once; ``None`` never runs it."""

    def __init__(self, interval: timedelta | None, run: Callable[[], object]) -> None:
        self.interval = interval
        self.next_due: datetime | None = None
        self._run = run
        self._thread: threading.Thread | None = None

    def tick(self, now: datetime) -> None:
        if self.interval is None:
            return
        if self.next_due is None or self.next_due > now + self.interval:
            self.next_due = now + self.interval  # (a clock stepped back: not a year's pause)
            return
        busy = self._thread is not None and self._thread.is_alive()
        if now >= self.next_due and not busy:
            self.next_due = now + self.interval
            self._thread = threading.Thread(target=self._safely, daemon=True,
                                            name="health-checks")
            self._thread.start()

    def _safely(self) -> None:
        try:
            self._run()
        except Exception:  # noqa: BLE001 - a health check must not stop the daemon
            log.exception("health checks crashed")

    def join(self, timeout: float | None) -> bool:
        """Wait for a running check; True when none runs any more."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()
