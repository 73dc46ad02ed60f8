"""Scheduled backups: cron timing, retention, health checks, notifications, daemon."""

from dsbackup.scheduler.config import (
    NotificationConfig,
    RunRecord,
    ScheduledBackup,
    SchedulerConfig,
    ScheduleStatistics,
)
from dsbackup.scheduler.retention import RetentionPolicy, apply_retention
from dsbackup.scheduler.scheduler import BackupScheduler

__all__ = [
    "BackupScheduler",
    "NotificationConfig",
    "RetentionPolicy",
    "RunRecord",
    "ScheduleStatistics",
    "ScheduledBackup",
    "SchedulerConfig",
    "apply_retention",
]
