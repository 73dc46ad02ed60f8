"""Secrets never show, by construction (issue 20, item 12): they are held as Secret, and every
notifier error is rebuilt from safe parts, never the HTTP/SMTP library's text. Real servers on
127.0.0.1."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

import pytest

from dsbackup.errors import ConfigError
from dsbackup.scheduler import NotificationConfig, ScheduledBackup
from dsbackup.scheduler.notify.base import Event, NotificationDispatcher

from ..conftest import FakeRunner

UTC = timezone.utc
EVENT = Event("failure", "db", "ipfs", datetime(2026, 1, 6, 3, tzinfo=UTC), "backup failed", {})


def failing_run(make_scheduler, clock, ncfg):
    runner = FakeRunner(clock)
    runner.fail = {1}
    s = make_scheduler(runner=runner, notifiers=None, notification_config=ncfg)
    s.add_schedule(ScheduledBackup(id="db", name="ipfs", schedule="@daily", source="memory:"))
    clock.set(datetime(2026, 1, 6, tzinfo=UTC))
    s.run_pending(wait=True)
    return s


def assert_nowhere(secret: str, s, caplog, tmp_path) -> None:
    assert secret not in caplog.text
    assert all(secret not in e for e in s.notifications.last_error.values())
    state = (tmp_path / "state" / "state.json").read_text()
    assert secret not in state
    assert secret not in json.dumps(s.get_metrics(), default=str)


def test_webhook_url_with_a_space_never_shows(make_scheduler, clock, http_server, caplog,
                                              tmp_path):
    ncfg = NotificationConfig(webhook_url=http_server.url + "/hooks/WEBHOOK TOKEN42",
                              webhook_retries=0, timeout=1)
    with caplog.at_level(logging.DEBUG):
        s = failing_run(make_scheduler, clock, ncfg)
    assert s.notifications.failed["webhook"] == 1
    err = s.notifications.last_error["webhook"]
    assert f"POST http://127.0.0.1:{http_server.url.rsplit(':', 1)[1]}/***" in err
    assert "InvalidURL" in err
    assert_nowhere("TOKEN42", s, caplog, tmp_path)
    assert http_server.requests == []  # nothing was sent


def test_header_value_with_a_newline_never_shows(make_scheduler, clock, http_server, caplog,
                                                 tmp_path):
    ncfg = NotificationConfig(webhook_url=http_server.url + "/hook",
                              webhook_headers={"Authorization": "Bearer tok-NL-77\n"},
                              webhook_retries=0, timeout=1)
    with caplog.at_level(logging.DEBUG):
        s = failing_run(make_scheduler, clock, ncfg)
    assert s.notifications.failed["webhook"] == 1
    assert "request refused by the HTTP client" in s.notifications.last_error["webhook"]
    assert_nowhere("tok-NL-77", s, caplog, tmp_path)


def test_http_error_messages_name_only_scheme_host_port_and_status(http_server):
    http_server.statuses = [403]
    d = NotificationDispatcher.from_config(NotificationConfig(
        webhook_url=http_server.url + "/hooks/abc-PATH-SECRET?token=q-SECRET", timeout=2,
        ping_failure_url=http_server.url + "/ping/uuid-PING-SECRET"))
    http_server.statuses = [403, 404]
    assert d.dispatch(EVENT) == {"webhook": False, "ping": False}
    for err in d.last_error.values():
        assert "SECRET" not in err and http_server.url + "/***" in err
        assert "HTTP 403" in err or "HTTP 404" in err


def test_secrets_print_redacted():
    from dsbackup.scheduler.secret import Secret

    cfg = NotificationConfig(smtp_host="h", recipients=["a@b"], smtp_username="u",
                             smtp_password="pw-XYZ-1", webhook_url="https://h.org/t/XYZ-2",
                             webhook_headers={"Authorization": "Bearer XYZ-3"},
                             ping_start_url="https://hc.org/XYZ-4")
    text = f"{cfg!r} {cfg.smtp_password} {cfg.webhook_url!r} {cfg.webhook_headers} " \
           f"{cfg.ping_start_url:>10}"
    assert "XYZ" not in text and "https://h.org/***" in text
    assert isinstance(cfg.smtp_password, Secret) and cfg.smtp_password.reveal() == "pw-XYZ-1"
    assert sorted(cfg.secrets()) == sorted(["pw-XYZ-1", "https://h.org/t/XYZ-2", "Bearer XYZ-3",
                                            "https://hc.org/XYZ-4"])


def test_plaintext_login_is_refused_unless_allowed():
    with pytest.raises(ConfigError, match="unencrypted"):
        NotificationConfig(smtp_host="h", recipients=["a@b"], smtp_tls="none",
                           smtp_username="u", smtp_password="pw")
    NotificationConfig(smtp_host="h", recipients=["a@b"], smtp_tls="none", smtp_username="u",
                       smtp_password="pw", smtp_allow_plaintext_auth=True)
