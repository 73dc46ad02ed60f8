"""A notifier for tests that remembers the events it was sent."""

from __future__ import annotations


class Recorder:
    """A notifier that remembers events."""

    name = "recorder"

    def __init__(self) -> None:
        self.events = []

    def wants(self, event) -> bool:
        return True

    def send(self, event, timeout: float) -> None:
        self.events.append(event)
