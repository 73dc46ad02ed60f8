"""The notifiers a configuration turns on, and the dispatcher that bounds them (events and
the notifier interface: :mod:`.event`).

A notifier failing or hanging never changes a backup's result: the dispatcher runs every
notifier in its own thread, waits at most ``timeout`` (+ a small margin) for all of them, logs
failures with secrets redacted, and counts successes and failures per service.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from dsbackup.scheduler.config import NotificationConfig
from dsbackup.scheduler.notify.email import EmailNotifier
from dsbackup.scheduler.notify.event import EVENT_KINDS, Event, Notifier, wants_result
from dsbackup.scheduler.notify.failure import describe
from dsbackup.scheduler.notify.ping import PingNotifier
from dsbackup.scheduler.notify.redact import Redactor
from dsbackup.scheduler.notify.webhook import WebhookNotifier

__all__ = ["EVENT_KINDS", "Event", "NotificationDispatcher", "Notifier", "build_notifiers",
           "wants_result"]

log = logging.getLogger(__name__)

def build_notifiers(cfg: NotificationConfig) -> list[Notifier]:
    """The services the configuration turns on."""
    out: list[Notifier] = []
    if cfg.smtp_host and cfg.recipients:
        out.append(EmailNotifier(cfg))
    if cfg.webhook_url:
        out.append(WebhookNotifier(cfg))
    if cfg.ping_start_url or cfg.ping_success_url or cfg.ping_failure_url:
        out.append(PingNotifier(cfg))
    return out


class NotificationDispatcher:
    """Sends events to notifiers, bounded in time; never raises."""

    def __init__(self, notifiers: list[Notifier], timeout: float = 10.0,
                 redactor: Redactor | None = None) -> None:
        self.notifiers = notifiers
        self.timeout = timeout
        self.redact = redactor or Redactor()
        self.sent: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.last_error: dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: NotificationConfig) -> NotificationDispatcher:
        return cls(build_notifiers(cfg), cfg.timeout, Redactor(cfg.secrets()))

    def _send_one(self, notifier: Notifier, event: Event, done: dict[str, str | None]) -> None:
        try:
            notifier.send(event, self.timeout)
        except Exception as exc:  # noqa: BLE001 - any failure of a notifier is only counted
            done[notifier.name] = describe(exc)  # safe parts only, never the library's text
        else:
            done[notifier.name] = None

    def dispatch(self, event: Event) -> dict[str, bool]:
        """Send ``event`` to every interested notifier; returns {service: delivered}."""
        targets = [n for n in self.notifiers if n.wants(event)]
        done: dict[str, str | None] = {}
        threads = []
        for n in targets:
            t = threading.Thread(target=self._send_one, args=(n, event, done),
                                 name=f"notify-{n.name}", daemon=True)
            t.start()
            threads.append((n, t))
        deadline = time.monotonic() + self.timeout + 1.0  # all run in parallel: one bound
        for _n, t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        outcome = {}
        with self._lock:
            for n, _t in threads:
                err = done.get(n.name, f"no answer within {self.timeout:g} s")
                if err is None:
                    self.sent[n.name] += 1
                    outcome[n.name] = True
                else:
                    err = self.redact(err)
                    self.failed[n.name] += 1
                    self.last_error[n.name] = err
                    outcome[n.name] = False
                    log.warning("notification via %s failed (%s event of %s): %s", n.name,
                                event.kind, event.schedule_id or "scheduler", err)
        return outcome
