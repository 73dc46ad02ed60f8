"""JSON webhook and ping URLs against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone

import pytest

from dsbackup.scheduler import NotificationConfig, ScheduledBackup
from dsbackup.scheduler.notify.base import Event, NotificationDispatcher
from dsbackup.scheduler.notify.http import HttpFailure, request
from dsbackup.scheduler.notify.redact import Redactor, redact_url

from ..conftest import FakeRunner

UTC = timezone.utc
EVENT = Event("failure", "db", "ipfs", datetime(2026, 1, 6, 3, tzinfo=UTC), "backup ipfs failed",
              {"exit_code": 2})


def test_webhook_receives_the_json_of_a_failed_backup(make_scheduler, clock, http_server):
    runner = FakeRunner(clock)
    runner.fail = {1}
    ncfg = NotificationConfig(webhook_url=http_server.url + "/hook?token=abc123secret",
                              webhook_headers={"Authorization": "Bearer tok-987654"}, timeout=1)
    s = make_scheduler(runner=runner, notifiers=None, notification_config=ncfg)
    s.add_schedule(ScheduledBackup(id="db", name="ipfs", schedule="@daily", source="memory:"))
    clock.set(datetime(2026, 1, 6, tzinfo=UTC))
    s.run_pending(wait=True)
    assert len(http_server.requests) == 1
    method, path, body, headers = http_server.requests[0]
    assert (method, path) == ("POST", "/hook?token=abc123secret")
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Bearer tok-987654"
    doc = json.loads(body)
    assert doc["version"] == 1 and doc["event"] == "failure"
    assert doc["schedule_id"] == "db" and doc["schedule_name"] == "ipfs"
    assert doc["details"]["error"] == "simulated failure of run 1"
    assert doc["details"]["exit_code"] == 2
    assert s.notifications.sent["webhook"] == 1


def test_server_errors_are_retried_with_backoff(http_server):
    http_server.statuses = [500, 503, 200]
    d = NotificationDispatcher.from_config(NotificationConfig(
        webhook_url=http_server.url + "/h", webhook_retries=3, timeout=5))
    t0 = time.monotonic()
    assert d.dispatch(EVENT) == {"webhook": True}
    assert len(http_server.requests) == 3
    assert time.monotonic() - t0 >= 0.5 + 1.0  # backoff 0.5 s then 1 s
    assert d.sent["webhook"] == 1 and d.failed["webhook"] == 0


def test_client_errors_are_not_retried(http_server):
    http_server.statuses = [400]
    with pytest.raises(HttpFailure, match="HTTP 400 after 1 attempt"):
        request(http_server.url, data=b"{}", method="POST", timeout=2, retries=3)
    assert len(http_server.requests) == 1


def test_a_hanging_server_times_out_within_the_bound(http_server, caplog):
    http_server.hang = 10
    d = NotificationDispatcher.from_config(NotificationConfig(
        webhook_url=http_server.url + "/slow?token=zz-secret-zz", timeout=1))
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert d.dispatch(EVENT) == {"webhook": False}
    assert time.monotonic() - t0 < 2.5
    assert d.failed["webhook"] == 1
    assert "zz-secret-zz" not in caplog.text and "notification via webhook failed" in caplog.text


def test_redirects_are_not_followed(http_server):
    other = http_server.url + "/elsewhere"
    http_server.statuses = [302]
    http_server.redirect_to = other
    with pytest.raises(HttpFailure, match="redirects are not followed"):
        request(http_server.url + "/start", data=b"{}", method="POST", timeout=2, retries=2)
    assert [r[1] for r in http_server.requests] == ["/start"]


def test_ping_urls_in_healthchecks_style(make_scheduler, clock, http_server):
    base = http_server.url + "/ping/0f1e2d3c-uuid"
    ncfg = NotificationConfig(ping_start_url=base + "/start", ping_success_url=base,
                              ping_failure_url=base + "/fail", timeout=1)
    runner = FakeRunner(clock)
    runner.fail = {2}
    s = make_scheduler(runner=runner, notifiers=None, notification_config=ncfg)
    s.add_schedule(ScheduledBackup(id="db", name="ipfs", schedule="@daily", source="memory:"))
    for day in (6, 7):
        clock.set(datetime(2026, 1, day, tzinfo=UTC))
        s.run_pending(wait=True)
    paths = [r[1] for r in http_server.requests]
    assert paths == ["/ping/0f1e2d3c-uuid/start", "/ping/0f1e2d3c-uuid",
                     "/ping/0f1e2d3c-uuid/start", "/ping/0f1e2d3c-uuid/fail"]
    assert b"simulated failure of run 2" in http_server.requests[-1][2]
    assert s.notifications.sent["ping"] == 4


def test_secrets_are_redacted():
    r = Redactor(["https://hc-ping.com/1234-uuid", "pw-abcdef"])
    msg = r("GET https://hc-ping.com/1234-uuid failed; login pw-abcdef rejected")
    assert msg == "GET https://hc-ping.com/*** failed; login *** rejected"
    assert redact_url("https://u:p@example.org:8443/hook?token=x") == "https://example.org:8443/***"


class DripServer:
    """A server on 127.0.0.1 that reads a request, then sends `head` and drips `drip` a byte
    every 0.1 s (each read well within any socket timeout)."""

    def __init__(self, head: bytes, drip: bytes) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.stop = threading.Event()
        self.head, self.drip = head, drip
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                try:
                    conn.sendall(self.head)
                    for b in self.drip:
                        if self.stop.wait(0.1):
                            return
                        conn.sendall(bytes([b]))
                except OSError:
                    continue  # the client gave up

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def test_a_server_dripping_its_answer_is_cut_at_the_total_deadline():
    """Each byte came within the socket timeout, so the notify thread went on reading (300
    bytes: 30 s) long after the dispatcher's bound; the deadline is now total."""
    import threading

    srv = DripServer(b"", b"HTTP/1.1 200 " + b"O" * 300 + b"\r\n\r\n")
    try:
        t0 = time.monotonic()
        with pytest.raises(HttpFailure, match=r"no whole answer within 1 s"):
            request(srv.url, data=b"{}", method="POST", timeout=1, retries=2)
        assert time.monotonic() - t0 < 2.5
        d = NotificationDispatcher.from_config(NotificationConfig(webhook_url=srv.url,
                                                                  timeout=1))
        assert d.dispatch(EVENT) == {"webhook": False}
        for _ in range(50):  # its thread ended with the deadline, not with the drip
            if not any(t.name == "notify-webhook" for t in threading.enumerate()):
                break
            time.sleep(0.05)
        assert not any(t.name == "notify-webhook" for t in threading.enumerate())
        assert "no whole answer within 1 s" in d.last_error["webhook"]
    finally:
        srv.close()


def test_a_2xx_whose_headers_or_body_drip_is_delivered_at_the_deadline():
    """Its status came: the server took the notification (http.client ends headers cut
    short as it does a body)."""
    srv = DripServer(b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n", b"b" * 300)
    try:
        t0 = time.monotonic()
        assert request(srv.url, data=b"{}", method="POST", timeout=1) == 200
        assert time.monotonic() - t0 < 2.5
    finally:
        srv.close()
