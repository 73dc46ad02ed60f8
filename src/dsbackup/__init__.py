"""dsbackup: fast, provably intact backups of IPFS-style key/value datastores."""

from dsbackup._version import __version__
from dsbackup.errors import (
    ArchiveError,
    DsBackupError,
    IntegrityError,
    LockedError,
    NotFound,
)

__all__ = [
    "__version__",
    "ArchiveError",
    "DsBackupError",
    "IntegrityError",
    "LockedError",
    "NotFound",
]

# scheduler
from dsbackup.scheduler import (  # noqa: E402
    BackupScheduler,
    NotificationConfig,
    RetentionPolicy,
    ScheduledBackup,
    SchedulerConfig,
)

__all__ += ["BackupScheduler", "NotificationConfig", "RetentionPolicy", "ScheduledBackup",
            "SchedulerConfig"]
