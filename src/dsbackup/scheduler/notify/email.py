"""Email through SMTP (stdlib smtplib): implicit TLS, STARTTLS or plain, with timeouts."""

from __future__ import annotations

import json
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from dsbackup.scheduler.config import NotificationConfig
from dsbackup.scheduler.notify.base import Event

SUBJECTS = {"failure": "FAILED", "success": "OK", "health": "HEALTH CHECK FAILED"}


def build_message(event: Event, sender: str, recipients: list[str]) -> EmailMessage:
    what = event.schedule_name or "scheduler"
    msg = EmailMessage()
    msg["Subject"] = f"[dsbackup] {SUBJECTS.get(event.kind, event.kind)}: {what}"
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
        if event.kind == "success":
            return self.cfg.email_on_success
        return event.kind in ("failure", "health") and self.cfg.email_on_failure

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cfg.smtp_ca_file)

    def send(self, event: Event, timeout: float) -> None:
        cfg = self.cfg
        assert cfg.smtp_host
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
                smtp.starttls(context=self._context())
            if cfg.smtp_username:
                smtp.login(cfg.smtp_username, cfg.smtp_password or "")
            if smtp.sock is not None:  # the remaining time bounds the rest of the dialogue
                smtp.sock.settimeout(max(0.1, deadline - time.monotonic()))
            smtp.send_message(msg)
        finally:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()
