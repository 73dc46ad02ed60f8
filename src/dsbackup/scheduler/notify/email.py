"""Email through SMTP (stdlib smtplib): implicit TLS, STARTTLS or plain, with timeouts.

Failures are re-raised as :class:`NotificationFailure` with a message made of the host, port,
the step that failed and the SMTP reply code: never smtplib's text or the server's reply, which
may echo a login or a password.
"""

from __future__ import annotations

import json
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from dsbackup.scheduler.config import NotificationConfig
from dsbackup.scheduler.notify.event import Event, wants_result
from dsbackup.scheduler.notify.failure import NotificationFailure, describe
from dsbackup.scheduler.secret import reveal

SUBJECTS = {"failure": "FAILED", "success": "OK", "health": "HEALTH CHECK FAILED"}


def build_message(event: Event, sender: str, recipients: list[str]) -> EmailMessage:
    what = event.schedule_name or "scheduler"
    msg = EmailMessage()
    subject = SUBJECTS.get(event.kind, event.kind)
    if event.kind == "success" and event.details.get("fallback"):
        subject = "OK (FULL BACKUP INSTEAD OF INCREMENTAL)"
    elif event.kind == "success" and event.details.get("incomplete"):
        subject = "OK (FILES NOT BACKED UP)"
    elif event.kind == "success" and event.details.get("empty_source"):
        subject = "OK (SOURCE EMPTY, NOTHING PRUNED)"
    msg["Subject"] = f"[dsbackup] {subject}: {what}"
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="dsbackup")
    lines = [event.message, "", f"schedule: {event.schedule_id or '-'}",
             f"time: {event.time.isoformat()}"]
    lines += [f"{k}: {v if isinstance(v, str) else json.dumps(v)}"
              for k, v in sorted(event.details.items())]
    msg.set_content("\n".join(lines) + "\n")
    return msg


class EmailNotifier:
    name = "email"

    def __init__(self, cfg: NotificationConfig) -> None:
        self.cfg = cfg

    def wants(self, event: Event) -> bool:
        return wants_result(event, self.cfg.email_on_success, self.cfg.email_on_failure)

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cfg.smtp_ca_file)

    def send(self, event: Event, timeout: float) -> None:
        cfg = self.cfg
        step = ["connect"]
        try:
            self._send(event, timeout, step)
        except Exception as exc:  # noqa: BLE001 - re-raised with a message of safe parts only
            raise NotificationFailure(
                f"SMTP {cfg.smtp_host}:{cfg.smtp_port} ({cfg.smtp_tls}): {step[0]} failed: "
                f"{_smtp_reason(exc)}") from None

    def _send(self, event: Event, timeout: float, step: list[str]) -> None:
        cfg = self.cfg
        assert cfg.smtp_host
        if cfg.smtp_username and cfg.smtp_tls == "none" and not cfg.smtp_allow_plaintext_auth:
            step[0] = "login"
            raise NotificationFailure("refused to send the password unencrypted (tls = none)")
        msg = build_message(event, cfg.smtp_from, cfg.recipients)
        deadline = time.monotonic() + timeout
        smtp: smtplib.SMTP
        if cfg.smtp_tls == "tls":
            smtp = smtplib.SMTP_SSL(cfg.smtp_host, cfg.smtp_port, timeout=timeout,
                                    context=self._context())
        else:
            smtp = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=timeout)
        try:
            if cfg.smtp_tls == "starttls":
                step[0] = "STARTTLS"
                smtp.starttls(context=self._context())
            if cfg.smtp_username:
                step[0] = "login"
                smtp.login(cfg.smtp_username, reveal(cfg.smtp_password) or "")
            if smtp.sock is not None:  # the remaining time bounds the rest of the dialogue
                smtp.sock.settimeout(max(0.1, deadline - time.monotonic()))
            step[0] = "sending"
            smtp.send_message(msg)
        finally:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()


def _smtp_reason(exc: BaseException) -> str:
    """What went wrong, from the exception's kind and SMTP reply code only."""
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return f"authentication rejected (reply {exc.smtp_code})"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return f"all {len(exc.recipients)} recipient(s) refused"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"server replied {exc.smtp_code} ({type(exc).__name__})"
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return "the server does not support this step"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return "the server closed the connection"
    return describe(exc)
