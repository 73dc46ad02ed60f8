"""SMTP email notifications against a real SMTP server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import email
import logging
import shutil
import socket
import ssl
import subprocess
import time
from datetime import datetime, timezone

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from dsbackup.scheduler import NotificationConfig, ScheduledBackup
from dsbackup.scheduler.notify.base import NotificationDispatcher

from ..conftest import FakeRunner

UTC = timezone.utc


class Inbox:
    def __init__(self, delay: float = 0.0) -> None:
        self.messages: list[tuple[list[str], email.message.Message]] = []
        self.delay = delay

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        if self.delay:
            await asyncio.sleep(self.delay)
        self.messages.append((list(envelope.rcpt_tos),
                              email.message_from_bytes(envelope.content)))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_smtp(handler, **kw) -> tuple[Controller, int]:
    port = free_port()
    ctl = Controller(handler, hostname="127.0.0.1", port=port, **kw)
    ctl.start()
    return ctl, port


@pytest.fixture
def smtp():
    inbox = Inbox()
    ctl, port = start_smtp(inbox)
    yield inbox, port
    ctl.stop()


def run_failing_backup(make_scheduler, clock, ncfg: NotificationConfig):
    runner = FakeRunner(clock)
    runner.fail = {1}
    s = make_scheduler(runner=runner, notifiers=None, notification_config=ncfg)
    s.add_schedule(ScheduledBackup(id="db", name="ipfs-db", schedule="0 3 * * *",
                                   source="lmdb:/srv/ipfs"))
    clock.set(datetime(2026, 1, 6, 3, 0, tzinfo=UTC))
    t0 = time.monotonic()
    s.run_pending(wait=True)
    return s, time.monotonic() - t0


def cfg(port: int, **kw) -> NotificationConfig:
    kw.setdefault("smtp_tls", "none")
    return NotificationConfig(smtp_host="127.0.0.1", smtp_port=port, recipients=["ops@example.org"],
                              smtp_from="backup@example.org", timeout=1.0, **kw)


def test_failure_email_arrives_with_subject_and_body(make_scheduler, clock, smtp):
    inbox, port = smtp
    s, _ = run_failing_backup(make_scheduler, clock, cfg(port))
    assert len(inbox.messages) == 1
    rcpts, msg = inbox.messages[0]
    assert rcpts == ["ops@example.org"]
    assert msg["Subject"] == "[dsbackup] FAILED: ipfs-db"
    body = msg.get_payload(decode=True).decode()
    assert "backup ipfs-db failed: simulated failure of run 1" in body
    assert "schedule: db" in body and "error_type: BackupError" in body
    assert s.notifications.sent["email"] == 1
    assert not s.get_schedule("db").last_result.ok
    assert s.get_schedule("db").last_result.notified == {"email": True}


def test_success_email_only_when_asked(make_scheduler, clock, smtp):
    inbox, port = smtp
    s = make_scheduler(notifiers=None, notification_config=cfg(port, email_on_success=True))
    s.add_schedule(ScheduledBackup(id="db", name="db", schedule="@daily", source="memory:"))
    clock.set(datetime(2026, 1, 6, 0, 0, tzinfo=UTC))
    s.run_pending(wait=True)
    assert [m["Subject"] for _, m in inbox.messages] == ["[dsbackup] OK: db"]


@pytest.mark.parametrize("server", ["down", "blackholed", "slow"])
def test_unreachable_smtp_never_fails_the_backup(make_scheduler, clock, server, closed_port,
                                                 blackhole_port, caplog):
    ctl = None
    if server == "down":
        port = closed_port
    elif server == "blackholed":
        port = blackhole_port
    else:
        ctl, port = start_smtp(Inbox(delay=5.0))
    try:
        runner = FakeRunner(clock)
        s = make_scheduler(runner=runner, notifiers=None,
                           notification_config=cfg(port, email_on_success=True))
        s.add_schedule(ScheduledBackup(id="db", name="db", schedule="@daily", source="memory:"))
        clock.set(datetime(2026, 1, 6, 0, 0, tzinfo=UTC))
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING):
            s.run_pending(wait=True)
        elapsed = time.monotonic() - t0
    finally:
        if ctl is not None:
            ctl.stop()
    result = s.get_schedule("db").last_result
    assert result.ok  # the backup succeeded
    assert result.notified == {"email": False}  # and the failed notification is recorded
    assert s.notifications.failed["email"] == 1 and s.notifications.sent["email"] == 0
    assert elapsed < 3.5  # bounded by the 1 s notification timeout (+ margin)
    assert "notification via email failed" in caplog.text


def _make_cert(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("openssl command not available to make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return key, cert


def test_starttls_and_login_keep_the_password_secret(make_scheduler, clock, tmp_path, caplog):
    key, cert = _make_cert(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret-pw")

    inbox = Inbox()
    ctl, port = start_smtp(inbox, tls_context=ctx, require_starttls=True,
                           authenticator=authenticator, auth_required=True)
    try:
        good = NotificationDispatcher.from_config(cfg(
            port, smtp_tls="starttls", smtp_ca_file=str(cert), smtp_username="backup",
            smtp_password="s3cret-pw"))
        from dsbackup.scheduler.notify.base import Event
        ev = Event("failure", "db", "db", datetime(2026, 1, 1, tzinfo=UTC), "it broke", {})
        assert good.dispatch(ev) == {"email": True}
        bad = NotificationDispatcher.from_config(cfg(
            port, smtp_tls="starttls", smtp_ca_file=str(cert), smtp_username="backup",
            smtp_password="wrong-pw-123"))
        with caplog.at_level(logging.DEBUG):
            assert bad.dispatch(ev) == {"email": False}
    finally:
        ctl.stop()
    assert logins == [(b"backup", b"s3cret-pw"), (b"backup", b"wrong-pw-123")]
    assert len(inbox.messages) == 1
    assert "wrong-pw-123" not in caplog.text and "wrong-pw-123" not in bad.last_error["email"]
    assert "notification via email failed" in caplog.text


def test_server_replies_never_reach_the_log(make_scheduler, clock, caplog):
    """The SMTP library's exception carries the server's reply (which may echo anything):
    only the step and the reply code are reported."""
    def authenticator(server, session, envelope, mechanism, auth_data):
        return AuthResult(success=False, handled=False,
                          message="535 no such user backup pw=echoed-SECRET")

    ctl, port = start_smtp(Inbox(), authenticator=authenticator, auth_required=True,
                           auth_require_tls=False)
    try:
        d = NotificationDispatcher.from_config(cfg(
            port, smtp_username="backup", smtp_password="echoed-SECRET-x",
            smtp_allow_plaintext_auth=True))
        from dsbackup.scheduler.notify.base import Event
        ev = Event("failure", "db", "db", datetime(2026, 1, 1, tzinfo=UTC), "it broke", {})
        with caplog.at_level(logging.DEBUG):
            assert d.dispatch(ev) == {"email": False}
    finally:
        ctl.stop()
    err = d.last_error["email"]
    assert err == (f"SMTP 127.0.0.1:{port} (none): login failed: authentication rejected "
                   "(reply 535)")
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("dsbackup")]
    assert ours and not any("SECRET" in m for m in ours)  # (the test server logs its reply)


def test_plaintext_login_when_allowed_and_one_address_as_a_string(make_scheduler, clock,
                                                                  tmp_path):
    """``to = "ops@x"`` (a string) is one recipient: the mail arrives (no TypeError)."""
    from dsbackup.scheduler.config_file import load_config

    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append(auth_data.password)
        return AuthResult(success=True)

    inbox = Inbox()
    ctl, port = start_smtp(inbox, authenticator=authenticator, auth_required=True,
                           auth_require_tls=False)
    f = tmp_path / "s.toml"
    f.write_text(f"""
[notifications]
timeout = "2s"
[notifications.email]
host = "127.0.0.1"
port = {port}
tls = "none"
username = "backup"
password = "pw-plain"
allow_plaintext_auth = true
to = "ops@x"
[[schedule]]
id = "db"
cron = "@daily"
source = "memory:"
""")
    try:
        d = NotificationDispatcher.from_config(load_config(f).scheduler.notification_config)
        from dsbackup.scheduler.notify.base import Event
        ev = Event("failure", "db", "db", datetime(2026, 1, 1, tzinfo=UTC), "it broke", {})
        assert d.dispatch(ev) == {"email": True}, d.last_error
    finally:
        ctl.stop()
    assert logins == [b"pw-plain"]
    assert [rcpts for rcpts, _ in inbox.messages] == [["ops@x"]]
