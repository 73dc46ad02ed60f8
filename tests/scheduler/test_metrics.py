"""Prometheus exposition: the HTTP endpoint on 127.0.0.1 and the textfile."""

from __future__ import annotations

import urllib.error
import urllib.request
from datetime import datetime, timezone

import pytest

from dsbackup.scheduler import ScheduledBackup
from dsbackup.scheduler.metrics import MetricsServer, render_prometheus

UTC = timezone.utc


def test_endpoint_serves_metrics_on_loopback_only(make_scheduler, clock):
    s = make_scheduler(metrics_port=0, poll_interval=0.05)
    s.add_schedule(ScheduledBackup(id="db", name="db", schedule="@daily", source="memory:"))
    s.start()
    port = s.metrics_port
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "dsbackup_scheduler_up 1" in body
    assert 'dsbackup_schedule_runs_total{schedule="db"} 0' in body
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
    assert s._metrics_server._server.server_address[0] == "127.0.0.1"
    s.stop()


def test_textfile_is_written_by_the_loop(make_scheduler, clock, tmp_path):
    out = tmp_path / "prom" / "dsbackup.prom"
    s = make_scheduler(metrics_textfile=out, poll_interval=0.05)
    s.add_schedule(ScheduledBackup(id="db", name="db", schedule="@daily", source="memory:"))
    clock.set(datetime(2026, 1, 6, tzinfo=UTC))
    s.start()
    import time
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if out.exists() and 'dsbackup_schedule_successes_total{schedule="db"} 1' in out.read_text():
            break
        time.sleep(0.02)
    s.stop()
    assert 'dsbackup_schedule_successes_total{schedule="db"} 1' in out.read_text()


def test_label_values_are_escaped_and_missing_values_left_out():
    text = render_prometheus({"up": True, "schedules": {'a"b\\c': {"runs": 1, "next_run": None}},
                              "notifications": {"sent": {}, "failed": {"email": 2}}})
    assert 'dsbackup_schedule_runs_total{schedule="a\\"b\\\\c"} 1' in text
    assert "next_run_timestamp" not in text
    assert 'dsbackup_notifications_failed_total{service="email"} 2' in text


def test_server_stops_cleanly():
    srv = MetricsServer(0, lambda: "x 1\n")
    srv.start()
    assert urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=5).read() == (
        b"x 1\n")
    srv.stop()
