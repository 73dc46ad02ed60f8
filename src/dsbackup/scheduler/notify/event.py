"""Notification events and the notifier interface (every notifier and the dispatcher use
them; this module imports no notifier)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

EVENT_KINDS = ("start", "success", "failure", "health")


@dataclass
class Event:
    """Something to report. ``kind`` is one of start, success, failure, health."""

    kind: str
    schedule_id: str | None
    schedule_name: str | None
    time: datetime
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "event": self.kind, "schedule_id": self.schedule_id,
                "schedule_name": self.schedule_name, "time": self.time.isoformat(),
                "message": self.message, "details": self.details}


class Notifier(Protocol):
    """One notification service."""

    name: str

    def wants(self, event: Event) -> bool:
        """Whether this service reports this kind of event."""
        ...

    def send(self, event: Event, timeout: float) -> None:
        """Deliver the event within ``timeout`` seconds in all; raise on failure.

        Raise :class:`~.failure.NotificationFailure` with a message of safe parts; the text of
        any other exception is never shown (only its type)."""
        ...


def wants_result(event: Event, on_success: bool, on_failure: bool) -> bool:
    """Whether a service with these switches reports ``event``: a success that needed a
    fallback (a full backup instead of an incremental), left files of the store out or found
    the store empty goes to those who want failures too."""
    if event.kind == "success":
        return on_success or (on_failure and bool(event.details.get("fallback")
                                                  or event.details.get("incomplete")
                                                  or event.details.get("empty_source")))
    return event.kind in ("failure", "health") and on_failure
