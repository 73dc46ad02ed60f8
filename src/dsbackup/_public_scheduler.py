"""Public names of the scheduler, for ``dsbackup.__getattr__`` (imported lazily)."""

PUBLIC = {
    "BackupScheduler": "dsbackup.scheduler.scheduler:BackupScheduler",
    "SchedulerConfig": "dsbackup.scheduler.config:SchedulerConfig",
    "ScheduledBackup": "dsbackup.scheduler.config:ScheduledBackup",
    "RetentionPolicy": "dsbackup.scheduler.retention:RetentionPolicy",
    "NotificationConfig": "dsbackup.scheduler.config:NotificationConfig",
}
