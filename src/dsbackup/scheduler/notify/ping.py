"""Ping URLs in the style of healthchecks.io: one URL each for start, success and failure.

The failure ping carries the error message as a plain-text body (healthchecks.io shows it).
"""

from __future__ import annotations

from dsbackup.scheduler.config import NotificationConfig
from dsbackup.scheduler.notify.event import Event
from dsbackup.scheduler.notify.http import request


class PingNotifier:
    name = "ping"

    def __init__(self, cfg: NotificationConfig) -> None:
        self.urls = {"start": cfg.ping_start_url, "success": cfg.ping_success_url,
                     "failure": cfg.ping_failure_url}

    def wants(self, event: Event) -> bool:
        return bool(self.urls.get(event.kind))

    def send(self, event: Event, timeout: float) -> None:
        url = self.urls[event.kind]
        assert url
        body = event.message.encode()[:10000] if event.kind == "failure" else b""
        request(url, data=body, headers={"Content-Type": "text/plain", "User-Agent": "dsbackup"},
                method="POST", timeout=timeout, retries=2)
