"""Scheduled backups: cron timing, retention, health checks, notifications, daemon.

The facade the command line (`dsbackup schedule`, `dsbackup prune`) and library users import
from; the modules behind it are the scheduler's own (docs/ARCHITECTURE.md).
"""

from dsbackup.scheduler.archives import list_archives
from dsbackup.scheduler.config import (
    NotificationConfig,
    RunRecord,
    ScheduledBackup,
    SchedulerConfig,
    ScheduleStatistics,
)
from dsbackup.scheduler.config_file import LoadedConfig, load_config
from dsbackup.scheduler.cron import CronSchedule, get_zone
from dsbackup.scheduler.durations import parse_duration
from dsbackup.scheduler.notify.redact import Redactor
from dsbackup.scheduler.pruning import plan_retention
from dsbackup.scheduler.retention import (
    RULES,
    RetentionItem,
    RetentionPolicy,
    apply_retention,
    forced_kept,
)
from dsbackup.scheduler.runner import ManagerRunner
from dsbackup.scheduler.scheduler import BackupScheduler
from dsbackup.scheduler.state import DaemonLock, StateStore, pid_alive

__all__ = [
    "RULES",
    "BackupScheduler",
    "CronSchedule",
    "DaemonLock",
    "LoadedConfig",
    "ManagerRunner",
    "Redactor",
    "RetentionItem",
    "StateStore",
    "get_zone",
    "list_archives",
    "load_config",
    "parse_duration",
    "pid_alive",
    "plan_retention",
    "NotificationConfig",
    "RetentionPolicy",
    "RunRecord",
    "ScheduleStatistics",
    "ScheduledBackup",
    "SchedulerConfig",
    "apply_retention",
    "forced_kept",
]
