"""dsbackup: fast, provably intact backups of IPFS-style key/value datastores.

The public API (stable; see docs/API.md). Names are imported lazily so that `import dsbackup`
stays cheap for tools that only need part of it.
"""

from __future__ import annotations

from dsbackup._lazy import lazy_names
from dsbackup._version import __version__
from dsbackup.errors import (
    ArchiveError,
    Cancelled,
    ConfigError,
    DatastoreError,
    DsBackupError,
    IntegrityError,
    LockedError,
    MissingParentError,
    NotFound,
)

_LAZY = {
    "BackupManager": "dsbackup.engine.backup",
    "BackupConfig": "dsbackup.engine.config",
    "BackupMetadata": "dsbackup.metadata",
    "BackupStatistics": "dsbackup.metadata",
    "RestoreResult": "dsbackup.metadata",
    "Progress": "dsbackup.metadata",
    "VerifyReport": "dsbackup.archive.verify",
    "ArchiveReader": "dsbackup.archive.reader",
    "Key": "dsbackup.keys",
    "Query": "dsbackup.datastores.query",
    "open_datastore": "dsbackup.datastores",
    # incremental backups
    "consolidate_archive": "dsbackup.archive.consolidate",
    "choose_parent": "dsbackup.archive.lineage",
    "parent_of": "dsbackup.archive.lineage",
    "archive_fingerprint": "dsbackup.archive.lineage",
    "required_archives": "dsbackup.archive.lineage",
    "directory_archives": "dsbackup.archive.lineage",
    # encryption (docs/ENCRYPTION.md)
    "KeyMaterial": "dsbackup.archive.crypto",
    "load_key_file": "dsbackup.archive.crypto",
    "load_passphrase_file": "dsbackup.archive.crypto",
    "write_key_file": "dsbackup.archive.crypto",
    "using_key": "dsbackup.archive.crypto",
    "expecting_encrypted": "dsbackup.archive.crypto",
    "PASSPHRASE_ENV": "dsbackup.archive.crypto",
    "MISSING_KEY": "dsbackup.archive.crypto",
    # reading archives without restoring them
    "iter_listing": "dsbackup.archive.listing",
    "NodeFile": "dsbackup.archive.node",
    "prefix_bounds": "dsbackup.engine.restore",
    # restore and verify without the backup engine's imports (the CLI's start-up)
    "restore_archive": "dsbackup.engine.restore",
    "verify_archive": "dsbackup.archive.verify",
    # the Go tool's format (docs/GOFORMAT.md)
    "is_go_archive": "dsbackup.compat.gohead",  # goformat's, without its imports for ours
    "inspect_go": "dsbackup.compat.gocompat",
    "list_go": "dsbackup.compat.gocompat",
    "verify_go": "dsbackup.compat.gocompat",
    # process set-up of a backup and settings advice
    "prestart_workers": "dsbackup.pipeline.scanchoice",
    "stop_workers_zygote": "dsbackup.pipeline.scanchoice",
    "tune": "dsbackup.engine.tune",
    "plot": "dsbackup.engine.tune",
    "TuneResult": "dsbackup.engine.tune",
    "GOALS": "dsbackup.engine.tune",
    "DEFAULT_CHUNK_TARGETS": "dsbackup.engine.tune",
    # scheduler
    "BackupScheduler": "dsbackup.scheduler",
    "SchedulerConfig": "dsbackup.scheduler",
    "ScheduledBackup": "dsbackup.scheduler",
    "RetentionPolicy": "dsbackup.scheduler",
    "NotificationConfig": "dsbackup.scheduler",
    # migration
    "MigrationManager": "dsbackup.migration",
    "MigrationConfig": "dsbackup.migration",
    "MigrationPlan": "dsbackup.migration",
    "MigrationStep": "dsbackup.migration",
    "MigrationType": "dsbackup.migration",
    "TransformationConfig": "dsbackup.migration",
    "FilterConfig": "dsbackup.migration",
    "MigrationResult": "dsbackup.migration",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())


__all__ = [
    "__version__",
    "ArchiveError",
    "Cancelled",
    "ConfigError",
    "DatastoreError",
    "DsBackupError",
    "IntegrityError",
    "LockedError",
    "MissingParentError",
    "NotFound",
    *_LAZY,
]
