"""Prometheus text exposition of the scheduler's metrics: an HTTP endpoint on 127.0.0.1 or a
textfile for node_exporter's textfile collector."""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from dsbackup.errors import ConfigError, SchedulerError
from dsbackup.scheduler.config import ScheduledBackup
from dsbackup.scheduler.state import atomic_write

log = logging.getLogger(__name__)

_SCHEDULE_METRICS = [
    # (metric, key in the schedule dict, type, help)
    ("dsbackup_schedule_runs_total", "runs", "counter", "Backup runs started"),
    ("dsbackup_schedule_successes_total", "successes", "counter", "Backup runs that succeeded"),
    ("dsbackup_schedule_failures_total", "failures", "counter", "Backup runs that failed"),
    ("dsbackup_schedule_skipped_total", "skipped", "counter",
     "Scheduled slots not run (overlap or downtime beyond the grace time)"),
    ("dsbackup_schedule_running", "running", "gauge", "1 while a run is in progress"),
    ("dsbackup_schedule_enabled", "enabled", "gauge", "1 if the schedule is enabled"),
    ("dsbackup_schedule_success_rate", "success_rate", "gauge", "Successes / runs"),
    ("dsbackup_schedule_average_duration_seconds", "average_duration", "gauge",
     "Mean run duration"),
    ("dsbackup_schedule_last_duration_seconds", "last_duration", "gauge", "Last run duration"),
    ("dsbackup_schedule_last_success_timestamp_seconds", "last_success", "gauge",
     "Unix time of the last success"),
    ("dsbackup_schedule_last_failure_timestamp_seconds", "last_failure", "gauge",
     "Unix time of the last failure"),
    ("dsbackup_schedule_next_run_timestamp_seconds", "next_run", "gauge",
     "Unix time of the next run"),
    ("dsbackup_schedule_last_archive_bytes", "last_size", "gauge", "Size of the last archive"),
    ("dsbackup_schedule_archives", "archives", "gauge", "Archives kept for the schedule"),
]


def schedule_metrics(s: ScheduledBackup, *, running: bool, archives: int) -> dict[str, Any]:
    """Counters and gauges of one schedule (a value of ``get_metrics()["schedules"]``)."""
    st, last = s.statistics, s.last_result
    return {
        "name": s.name, "enabled": s.enabled, "running": running,
        "runs": st.runs, "successes": st.successes, "failures": st.failures,
        "skipped": st.skipped, "success_rate": st.success_rate,
        "average_duration": st.average_duration,
        "last_duration": last.duration if last else None,
        "last_success": st.last_success, "last_failure": st.last_failure,
        "last_run": s.last_run, "next_run": s.next_run,
        "last_ok": last.ok if last else None,
        "last_size": last.size if last and last.ok else None,
        "archives": archives,
    }


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return f"{value.timestamp():.3f}"
    if isinstance(value, bool):
        return "1" if value else "0"
    return f"{value:g}" if isinstance(value, float) else str(value)


def render_prometheus(metrics: dict[str, Any]) -> str:
    """Text format 0.0.4 of :meth:`BackupScheduler.get_metrics`'s dictionary."""
    lines: list[str] = []

    def family(name: str, kind: str, help_: str, samples: list[tuple[str, str | None]]) -> None:
        samples = [(labels, v) for labels, v in samples if v is not None]
        if not samples:
            return
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {v}" for labels, v in samples)

    family("dsbackup_scheduler_up", "gauge", "1 while the scheduler runs",
           [("", _num(metrics.get("up", False)))])
    family("dsbackup_scheduler_running_jobs", "gauge", "Backups running now",
           [("", _num(metrics.get("running_jobs", 0)))])
    schedules = metrics.get("schedules", {})
    for name, key, kind, help_ in _SCHEDULE_METRICS:
        family(name, kind, help_, [(f'{{schedule="{_esc(sid)}"}}', _num(s.get(key)))
                                   for sid, s in sorted(schedules.items())])
    notes = metrics.get("notifications", {})
    for key, name, help_ in (("sent", "dsbackup_notifications_sent_total", "Notifications sent"),
                             ("failed", "dsbackup_notifications_failed_total",
                              "Notifications that failed or timed out")):
        family(name, "counter", help_, [(f'{{service="{_esc(svc)}"}}', _num(n))
                                         for svc, n in sorted(notes.get(key, {}).items())])
    family("dsbackup_health_check_ok", "gauge", "1 if the health check passed",
           [(f'{{check="{_esc(c["check"])}",subject="{_esc(c["subject"])}"}}', _num(c["ok"]))
            for c in metrics.get("health", [])])
    family("dsbackup_health_check_timestamp_seconds", "gauge", "Unix time of the last check",
           [("", _num(metrics.get("last_health_check")))])
    family("dsbackup_backup_dir_free_bytes", "gauge", "Free bytes in the backup directory",
           [("", _num(metrics.get("free_bytes")))])
    return "\n".join(lines) + "\n"


def check_textfile(path: Path) -> None:
    """ConfigError when something other than a regular file is at `path`: the textfile is
    renamed into place, and `--metrics-textfile /dev/null` would replace the device."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # not there yet (or a dangling symlink): created
    if not stat.S_ISREG(mode):
        raise ConfigError(f"metrics textfile {path}: not a regular file; give the path of a "
                          "file for node_exporter's textfile collector")


def write_textfile(path: Path, text: str) -> None:
    check_textfile(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode(), mode=0o666)  # node_exporter (another user) reads it


class MetricsServer:
    """Serves ``/metrics`` on 127.0.0.1 (never on other interfaces)."""

    def __init__(self, port: int, render: Callable[[], str]) -> None:
        render_fn = render

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = render_fn().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("metrics: " + format, *args)

        try:
            self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError as exc:  # port in use, privileged port, ...
            raise SchedulerError(f"metrics port {port} on 127.0.0.1: {exc.strerror}") from None
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="metrics-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
