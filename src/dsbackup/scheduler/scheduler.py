"""BackupScheduler: runs each schedule on time, never overlapping itself, at most
``concurrent_backups`` at once, and keeps its state so that a restarted daemon continues.

The timing rules (which slot a due schedule serves, which it skips) are in slots.py, how a run
changes its schedule's statistics in accounting.py. The jobs around the loop live beside it:
the backup run itself in job.py, health checks in health.py, notifications in reporting.py,
Prometheus metrics in metrics.py.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dsbackup.errors import LockedError, SchedulerError
from dsbackup.scheduler.accounting import account_run
from dsbackup.scheduler.clock import Clock, SystemClock
from dsbackup.scheduler.config import (
    RunRecord,
    ScheduledBackup,
    SchedulerConfig,
    ScheduleStatistics,
)
from dsbackup.scheduler.cron import CronSchedule, get_zone
from dsbackup.scheduler.health import CheckResult, HealthTimer, run_checks
from dsbackup.scheduler.job import JobOutcome, run_job
from dsbackup.scheduler.metrics import (
    MetricsServer,
    check_textfile,
    render_prometheus,
    schedule_metrics,
    write_textfile,
)
from dsbackup.scheduler.notify.base import Notifier
from dsbackup.scheduler.reporting import RunReporter
from dsbackup.scheduler.runner import BackupRunner, ManagerRunner
from dsbackup.scheduler.slots import DueSlots, passed_while_running
from dsbackup.scheduler.state import (
    ArchiveEntry,
    DaemonLock,
    ScheduleState,
    StateStore,
    resolve_relative_paths,
)

log = logging.getLogger(__name__)


@dataclass
class _Running:
    cancel: threading.Event
    trigger: str
    marker: dict[str, str | None] = field(default_factory=dict)  # persisted while running
    done: threading.Event = field(default_factory=threading.Event)


def _os_error(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    return f"{exc.filename}: {what}" if exc.filename is not None else what


class BackupScheduler:
    """Schedules backups. Holds the lock of ``config.state_path`` from creation to :meth:`close`.

    ``runner`` makes the archives (default: ``dsbackup.BackupManager``), ``clock`` gives the time
    (default: the system clock), ``notifiers`` replaces the services built from
    ``config.notification_config``.
    """

    def __init__(self, config: SchedulerConfig, *, runner: BackupRunner | None = None,
                 clock: Clock | None = None, notifiers: list[Notifier] | None = None) -> None:
        self.config = config
        if config.metrics_textfile is not None:  # /dev/null, a pipe: refused before it runs
            check_textfile(config.metrics_textfile)
        self.runner: BackupRunner = runner or ManagerRunner()
        self.clock: Clock = clock or SystemClock()
        self.tz = get_zone(config.time_zone)
        self.reporter = RunReporter(config.notification_config, self.clock, notifiers)
        self.redact = self.reporter.redact
        self.notifications = self.reporter.notifications
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._slots = threading.Semaphore(config.concurrent_backups)
        self._schedules: dict[str, ScheduledBackup] = {}
        self._crons: dict[str, CronSchedule] = {}
        self._archives: dict[str, list[ArchiveEntry]] = {}
        self._running: dict[str, _Running] = {}
        self._loop: threading.Thread | None = None
        self._health_timer = HealthTimer(config.health_check_interval, self.run_health_checks)
        self._metrics_server: MetricsServer | None = None
        self.health: list[CheckResult] = []
        self.last_health_check: datetime | None = None
        self._free_bytes: int | None = None
        self.state_error: str | None = None  # why the last save of the state failed
        self._textfile_error: str | None = None
        self._daemon_lock = DaemonLock(config.state_path)
        self._daemon_lock.acquire()
        self._store = StateStore(config.state_path)
        try:
            self._persisted = self._store.load()
            self._store.remove_leftovers()  # of a daemon killed while it saved
        except BaseException:
            self._daemon_lock.release()
            raise

    # ---- schedules -------------------------------------------------------------------------

    def add_schedule(self, schedule: ScheduledBackup) -> ScheduledBackup:
        """Add a schedule; its persisted state (if any) is restored. Returns it."""
        cron = CronSchedule(schedule.schedule, self.tz)
        now = self.clock.now()
        spec = (schedule.backup_config.get("encryption")
                if isinstance(schedule.backup_config, dict) else None)
        if isinstance(spec, dict) and hasattr(self.runner, "_key"):
            self.runner._key(spec)  # verify, retention and pruning read its archives too
        with self._lock:
            if schedule.id in self._schedules:
                raise SchedulerError(f"schedule {schedule.id!r} exists already")
            st = self._persisted.get(schedule.id)
            if st is not None:
                schedule.last_run = st.last_run
                if st.timing == self._timing(schedule):  # else the expression or zone changed
                    schedule.next_run = st.next_run
                schedule.last_result = st.last_result
                schedule.statistics = st.statistics or ScheduleStatistics()
                self._archives[schedule.id] = archives = list(st.archives or [])
                n = resolve_relative_paths(
                    archives, schedule.backup_dir or self.config.default_backup_dir)
                if n:  # (saved below: the state then holds absolute paths)
                    log.info("schedule %s: %d archive path(s) recorded relative to an earlier "
                             "run's working directory now name the archives in %s",
                             schedule.id, n, schedule.backup_dir
                             or self.config.default_backup_dir)
                if st.running:
                    self._record_interrupted(schedule, st.running)
            else:
                self._archives[schedule.id] = []
            if not schedule.enabled:
                schedule.next_run = None  # a disabled schedule accumulates no misfires
            elif schedule.next_run is None:
                schedule.next_run = cron.next_after(max(now, schedule.last_run or now))
            self._schedules[schedule.id] = schedule
            self._crons[schedule.id] = cron
            self._save()
        self._wake.set()
        return schedule

    def _timing(self, schedule: ScheduledBackup) -> str:
        return f"{schedule.schedule} {self.config.time_zone}"

    def _record_interrupted(self, schedule: ScheduledBackup, running: dict[str, str]) -> None:
        started = datetime.fromisoformat(running["started"])
        log.warning("schedule %s: the run started %s was interrupted (scheduler stopped)",
                    schedule.id, started.isoformat())
        rec = RunRecord(ok=False, started=started, finished=started,
                        trigger=running.get("trigger", "schedule"),
                        error="interrupted: the scheduler stopped during this run",
                        error_type="Interrupted", exit_code=130)
        account_run(schedule, rec)
        if running.get("slot"):
            # serve the interrupted slot again (a catch-up, subject to the misfire rules)
            schedule.next_run = datetime.fromisoformat(running["slot"])

    def remove_schedule(self, schedule_id: str) -> bool:
        """Forget a schedule (its archives stay on disk). A running job finishes first."""
        with self._lock:
            if schedule_id not in self._schedules:
                return False
            del self._schedules[schedule_id]
            self._crons.pop(schedule_id, None)
            self._archives.pop(schedule_id, None)
            self._persisted.pop(schedule_id, None)
            self._save()
        return True

    def get_schedule(self, schedule_id: str) -> ScheduledBackup | None:
        with self._lock:
            return self._schedules.get(schedule_id)

    def list_schedules(self) -> list[ScheduledBackup]:
        with self._lock:
            return [self._schedules[k] for k in sorted(self._schedules)]

    def archives(self, schedule_id: str) -> list[ArchiveEntry]:
        """The archives this schedule made and still keeps, oldest first."""
        with self._lock:
            return sorted(self._archives.get(schedule_id, []), key=lambda a: a.created)

    def is_running(self, schedule_id: str) -> bool:
        with self._lock:
            return schedule_id in self._running

    # ---- state -----------------------------------------------------------------------------

    def _save(self) -> None:
        with self._lock:
            for sid, s in self._schedules.items():
                run = self._running.get(sid)
                self._persisted[sid] = ScheduleState(
                    last_run=s.last_run, next_run=s.next_run, last_result=s.last_result,
                    statistics=s.statistics, archives=self._archives.get(sid, []),
                    running=run.marker if run else None, timing=self._timing(s),
                )
            try:
                self._store.save(self._persisted)
            except OSError as exc:
                # a full or read-only state disk: the backups (often on another disk) go on,
                # and so do their notifications; the next save writes the whole state again
                error = f"state not saved: {_os_error(exc)}"
                if error != self.state_error:
                    log.error("%s (backups continue; the state is saved at the next change "
                              "that succeeds)", error)
                self.state_error = error
            else:
                if self.state_error is not None:
                    log.warning("state saved again (%s)", self._store.path)
                self.state_error = None

    # ---- timing ----------------------------------------------------------------------------

    def run_pending(self, *, wait: bool = False) -> list[str]:
        """Start every due, enabled, idle schedule. Returns the ids started.

        With ``wait`` the call returns when those runs have finished.
        """
        now = self.clock.now()
        started: list[str] = []
        runs: list[_Running] = []
        with self._lock:
            for sid, sched in sorted(self._schedules.items()):
                if not sched.enabled or sid in self._running or self._stopping.is_set():
                    continue
                cron = self._crons[sid]
                if sched.next_run is None:  # enabled since it was added
                    sched.next_run = cron.next_after(now)
                    continue
                by_clock = (cron.next_after(now) if sched.next_run > now + 2 * cron.period()
                            else sched.next_run)
                if by_clock < sched.next_run:
                    # the clock was stepped back by more than the schedule's period (it had run
                    # ahead): waiting for the slot after the last one served would stop every
                    # backup until the clock got there again (a year, after a bad RTC). Only
                    # then: slots lie between now and the next run. A long natural gap (a
                    # weekend, the repeated hour of a DST fall-back) is no step back.
                    log.warning("schedule %s: next run %s is more than twice its period ahead "
                                "of the clock (stepped back?); next run %s instead", sid,
                                sched.next_run.isoformat(), by_clock.isoformat())
                    sched.next_run = by_clock
                    self._save()
                if sched.next_run > now:
                    continue
                grace = self.config.misfire_grace_time
                due = DueSlots.at(cron, sched.next_run, now, grace)
                sched.next_run = due.next_run
                sched.statistics.skipped += due.skipped
                if not due.run:
                    log.warning("schedule %s: %d slot(s) missed, the latest %s ago (beyond the "
                                "grace time %s): waiting for %s", sid, due.count, due.late,
                                grace, sched.next_run.isoformat())
                    self._save()
                    continue
                if due.count > 1:
                    log.warning("schedule %s: %d slots missed; one catch-up run now",
                                sid, due.count)
                runs.append(self._launch(sched, due.trigger, due.latest))
                started.append(sid)
            if started:
                self._save()
        if wait:
            for run in runs:
                run.done.wait()
        return started

    def _new_run(self, trigger: str, slot: datetime | None) -> _Running:
        return _Running(cancel=threading.Event(), trigger=trigger,
                        marker={"started": self.clock.now().isoformat(), "trigger": trigger,
                                "slot": slot.isoformat() if slot else None})

    def _launch(self, sched: ScheduledBackup, trigger: str, slot: datetime | None) -> _Running:
        run = self._new_run(trigger, slot)
        self._running[sched.id] = run
        threading.Thread(target=self._job_thread, args=(sched, run), name=f"backup-{sched.id}",
                         daemon=True).start()
        return run

    def _job_thread(self, sched: ScheduledBackup, run: _Running) -> None:
        try:
            self._run_job(sched, run)
        finally:
            with self._lock:
                if self._running.get(sched.id) is run:
                    self._running.pop(sched.id)
            run.done.set()
            self._wake.set()

    def _run_job(self, sched: ScheduledBackup, run: _Running) -> RunRecord | None:
        with self._slots:
            if self._stopping.is_set() and run.trigger != "manual":
                self._unstart(sched, run)
                return None
            if run.cancel.is_set():
                rec = RunRecord(ok=False, started=self.clock.now(), finished=self.clock.now(),
                                trigger=run.trigger, error="cancelled before it started",
                                error_type="Cancelled", exit_code=130)
                outcome = JobOutcome(rec, self.archives(sched.id))
            else:
                self.reporter.started(sched)
                outcome = run_job(
                    sched, self.archives(sched.id), runner=self.runner, clock=self.clock,
                    backup_dir=sched.backup_dir or self.config.default_backup_dir,
                    policy=sched.retention_policy or self.config.retention_policy, tz=self.tz,
                    verify=self.config.verify_after_backup, trigger=run.trigger,
                    cancel=run.cancel)
        rec = outcome.record
        if rec.error:
            rec.error = self.redact(rec.error)
        with self._lock:
            account_run(sched, rec)
            if self._schedules.get(sched.id) is sched:
                self._archives[sched.id] = outcome.archives
                self._skip_passed_slots(sched)
            self._running.pop(sched.id, None)
            if self._schedules.get(sched.id) is sched:
                self._save()
        self._report(sched, rec, outcome.warnings)
        return rec

    def _unstart(self, sched: ScheduledBackup, run: _Running) -> None:
        """A run still waiting for a free slot when the scheduler stops is not started; its
        slot is served after a restart, under the misfire rules."""
        with self._lock:
            slot = run.marker.get("slot")
            if slot and self._schedules.get(sched.id) is sched:
                sched.next_run = datetime.fromisoformat(slot)
            if self._running.get(sched.id) is run:
                self._running.pop(sched.id)
            self._save()
        log.info("schedule %s: not started (the scheduler is stopping)", sched.id)

    def _skip_passed_slots(self, sched: ScheduledBackup) -> None:
        """Slots that came while this run was going are skipped, not queued (no overlap)."""
        passed = passed_while_running(self._crons[sched.id], sched.next_run, self.clock.now())
        if passed is None:
            return
        count, sched.next_run = passed
        sched.statistics.skipped += count
        log.warning("schedule %s: %d slot(s) passed while it ran (skipped); next run %s",
                    sched.id, count, sched.next_run.isoformat())

    def _report(self, sched: ScheduledBackup, rec: RunRecord, warnings: list[str]) -> None:
        outcome = self.reporter.finished(sched, rec, warnings)
        if outcome:  # record which notifications of this result were delivered
            with self._lock:
                rec.notified = outcome
                if self._schedules.get(sched.id) is sched:
                    self._save()

    def execute_backup(self, schedule_id: str, *, trigger: str = "manual") -> RunRecord:
        """Run a schedule now, in this thread; refused while the schedule is running."""
        with self._lock:
            sched = self._schedules.get(schedule_id)
            if sched is None:
                raise SchedulerError(f"no schedule {schedule_id!r}")
            if schedule_id in self._running:
                raise LockedError(f"schedule {schedule_id!r} is running already")
            run = self._new_run(trigger, None)
            self._running[schedule_id] = run
            self._save()
        try:
            rec = self._run_job(sched, run)
            assert rec is not None  # manual runs are never skipped
            return rec
        finally:
            with self._lock:
                if self._running.get(schedule_id) is run:
                    self._running.pop(schedule_id)
            run.done.set()

    # ---- health ----------------------------------------------------------------------------

    def run_health_checks(self) -> list[CheckResult]:
        """Verify the newest archive of each schedule, staleness, free space. Notifies failures."""
        now = self.clock.now()
        with self._lock:
            crons = dict(self._crons)
            since = {sid: datetime.fromisoformat(r.marker["started"])
                     for sid, r in self._running.items() if r.marker.get("started")}
        results, free = run_checks(self.list_schedules(), self.archives, crons, self.runner,
                                   self.config, now, since)
        with self._lock:
            self._save()  # the verified flags changed; and was the state saved?
            if self.state_error is not None:
                results.append(CheckResult("state", str(self._store.path), False,
                                           self.state_error))
            self.health, self.last_health_check, self._free_bytes = results, now, free
        self.reporter.health(results)
        return results

    # ---- metrics ---------------------------------------------------------------------------

    def get_metrics(self) -> dict[str, Any]:
        """Counters and gauges of every schedule, notifications and health checks."""
        with self._lock:
            schedules = {sid: schedule_metrics(s, running=sid in self._running,
                                               archives=len(self._archives.get(sid, [])))
                         for sid, s in self._schedules.items()}
            return {
                "up": self._loop is not None and self._loop.is_alive(),
                "running_jobs": len(self._running),
                "schedules": schedules,
                "notifications": {"sent": dict(self.notifications.sent),
                                  "failed": dict(self.notifications.failed)},
                "health": [r.to_json() for r in self.health],
                "last_health_check": self.last_health_check,
                "free_bytes": self._free_bytes,
            }

    def prometheus_text(self) -> str:
        return render_prometheus(self.get_metrics())

    # ---- daemon ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduling loop (and the metrics endpoint) in background threads."""
        with self._lock:
            if self._loop is not None and self._loop.is_alive():
                return
            self._stopping.clear()
            if self.config.metrics_port is not None and self._metrics_server is None:
                self._metrics_server = MetricsServer(self.config.metrics_port,
                                                     self.prometheus_text)
                self._metrics_server.start()
            self._loop = threading.Thread(target=self._loop_main, name="scheduler", daemon=True)
            self._loop.start()

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_server.port if self._metrics_server else None

    def wake(self) -> None:
        """Re-check the schedules now (e.g. after a test moved a manual clock)."""
        self._wake.set()

    def _loop_main(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                self.run_pending()
                now = self.clock.now()
                self._health_timer.tick(now)
                if self.config.metrics_textfile is not None:
                    self._write_textfile()
                pause = self._pause(now)
            except Exception:  # noqa: BLE001 - keep serving; the error is logged
                log.exception("scheduler loop error")
                pause = self.config.poll_interval
            self._wake.wait(pause)

    def _write_textfile(self) -> None:
        path = self.config.metrics_textfile
        assert path is not None
        try:
            write_textfile(path, self.prometheus_text())
        except OSError as exc:  # a full disk: one line, not a traceback every loop
            error = f"metrics textfile {path} not written: {_os_error(exc)}"
            if error != self._textfile_error:
                log.error("%s", error)
            self._textfile_error = error
        else:
            self._textfile_error = None

    def _pause(self, now: datetime) -> float:
        with self._lock:
            due = [s.next_run for s in self._schedules.values()
                   if s.enabled and s.next_run is not None and s.id not in self._running]
        if self._health_timer.next_due is not None:
            due.append(self._health_timer.next_due)
        pause = self.config.poll_interval
        if due:
            pause = min(pause, max(0.0, (min(due) - now).total_seconds()) + 0.01)
        return pause

    def cancel_running(self) -> int:
        """Ask every running job to stop cleanly (nothing partial is left); returns how many."""
        with self._lock:
            runs = list(self._running.values())
        for r in runs:
            r.cancel.set()
        return len(runs)

    def stop(self, *, wait: bool = True, cancel: bool = False,
             timeout: float | None = None) -> bool:
        """Stop scheduling. Running jobs finish their archive, or with ``cancel`` stop cleanly
        (nothing partial is left). With ``wait``, returns whether all jobs ended in ``timeout``.
        """
        self._stopping.set()
        self._wake.set()
        if self._loop is not None:
            self._loop.join(timeout)
        with self._lock:
            runs = list(self._running.values())
        if cancel:
            self.cancel_running()
        ended = True
        if wait:
            for r in runs:
                ended = r.done.wait(timeout) and ended
            ended = self._health_timer.join(timeout) and ended
        if self._metrics_server is not None:
            self._metrics_server.stop()
            self._metrics_server = None
        return ended

    def close(self) -> None:
        """Stop (waiting for jobs) and release the state directory."""
        self.stop(wait=True)
        self._daemon_lock.release()

    def __enter__(self) -> BackupScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
