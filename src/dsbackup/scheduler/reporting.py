"""What the scheduler tells the notification services: a run started, succeeded or failed,
health checks failed. Messages carry no secrets (``redact``)."""

from __future__ import annotations

import logging
from typing import Any

from dsbackup.scheduler.clock import Clock
from dsbackup.scheduler.config import NotificationConfig, RunRecord, ScheduledBackup
from dsbackup.scheduler.health import CheckResult
from dsbackup.scheduler.notify.base import Event, NotificationDispatcher, Notifier
from dsbackup.scheduler.notify.redact import Redactor

log = logging.getLogger(__name__)


class RunReporter:
    """Turns runs and health checks into notification events. ``notifiers`` replaces the
    services built from ``config``."""

    def __init__(self, config: NotificationConfig, clock: Clock,
                 notifiers: list[Notifier] | None = None) -> None:
        self.clock = clock
        self.redact = Redactor(config.secrets())
        if notifiers is None:
            self.notifications = NotificationDispatcher.from_config(config)
        else:
            self.notifications = NotificationDispatcher(notifiers, config.timeout, self.redact)

    def notify(self, kind: str, sched: ScheduledBackup | None, message: str,
               details: dict[str, Any]) -> dict[str, bool]:
        """Send one event; returns which services delivered it."""
        event = Event(kind, sched.id if sched else None, sched.name if sched else None,
                      self.clock.now(), message, details)
        return self.notifications.dispatch(event)

    def started(self, sched: ScheduledBackup) -> None:
        self.notify("start", sched, f"backup {sched.name} started", {})

    def finished(self, sched: ScheduledBackup, rec: RunRecord, warnings: list[str]
                 ) -> dict[str, bool]:
        """Report a finished run (success or failure); returns which services delivered it."""
        details: dict[str, Any] = {"trigger": rec.trigger, "duration_s": round(rec.duration, 3),
                                   "archive": rec.archive}
        if rec.ok:
            details.update(fingerprint=rec.fingerprint, size=rec.size, keys=rec.keys,
                           parent=rec.parent, fallback=rec.fallback, pruned=rec.pruned,
                           warnings=warnings)
            message = f"backup {sched.name} succeeded: {rec.archive}"
            if rec.fallback:
                message += f" (a full backup instead of an incremental: {rec.fallback})"
            incomplete = [w for w in warnings if w.startswith("not backed up: ")]
            if incomplete:  # files of the store are missing from the archive
                details["incomplete"] = incomplete[0]
                message += f" (with warnings: {incomplete[0]})"
            empty = [w for w in warnings if w.startswith("the source is empty")]
            if empty:  # a store not mounted? nothing was pruned (scheduler/job.py)
                details["empty_source"] = empty[0]
                message += f" (with warnings: {empty[0]})"
            return self.notify("success", sched, message, details)
        details.update(error=rec.error, error_type=rec.error_type, exit_code=rec.exit_code)
        log.error("schedule %s: backup failed: %s", sched.id, rec.error)
        return self.notify("failure", sched, f"backup {sched.name} failed: {rec.error}",
                           details)

    def health(self, results: list[CheckResult]) -> None:
        """Log and report the failed checks of ``results`` (nothing when all passed)."""
        failed = [r for r in results if not r.ok]
        if not failed:
            return
        for r in failed:
            log.warning("health check %s of %s failed: %s", r.check, r.subject, r.message)
        self.notify("health", None, f"{len(failed)} health check(s) failed: " +
                    "; ".join(f"{r.check} {r.subject}: {r.message}" for r in failed),
                    {"checks": [r.to_json() for r in results]})
