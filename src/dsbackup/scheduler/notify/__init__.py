"""Notification services, one module each, behind :class:`~.base.Notifier`."""

from dsbackup.scheduler.notify.base import Event, NotificationDispatcher, Notifier, build_notifiers

__all__ = ["Event", "NotificationDispatcher", "Notifier", "build_notifiers"]
