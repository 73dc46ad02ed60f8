"""JSON webhook: POSTs the event as JSON (versioned shape, see docs/SCHEDULER.md)."""

from __future__ import annotations

import json

from dsbackup.scheduler.config import NotificationConfig
from dsbackup.scheduler.notify.event import Event, wants_result
from dsbackup.scheduler.notify.http import request


class WebhookNotifier:
    name = "webhook"

    def __init__(self, cfg: NotificationConfig) -> None:
        assert cfg.webhook_url
        self.url = cfg.webhook_url
        self.headers = {"Content-Type": "application/json", "User-Agent": "dsbackup",
                        **cfg.webhook_headers}
        self.retries = cfg.webhook_retries
        self.on_success = cfg.webhook_on_success
        self.on_failure = cfg.webhook_on_failure

    def wants(self, event: Event) -> bool:
        return wants_result(event, self.on_success, self.on_failure)

    def send(self, event: Event, timeout: float) -> None:
        body = json.dumps(event.to_json()).encode()
        request(self.url, data=body, headers=self.headers, method="POST", timeout=timeout,
                retries=self.retries)
