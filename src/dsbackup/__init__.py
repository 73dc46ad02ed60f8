"""dsbackup: fast, provably intact backups of IPFS-style key/value datastores.

The public API (stable; see docs/API.md). Names are imported lazily so that `import dsbackup`
stays cheap for tools that only need part of it.
"""

from __future__ import annotations

import importlib
from typing import Any

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
    "BackupManager": "dsbackup.backup",
    "BackupConfig": "dsbackup.config",
    "BackupMetadata": "dsbackup.metadata",
    "BackupStatistics": "dsbackup.metadata",
    "RestoreResult": "dsbackup.metadata",
    "Progress": "dsbackup.metadata",
    "VerifyReport": "dsbackup.archive.verify",
    "ArchiveReader": "dsbackup.archive.reader",
    "Key": "dsbackup.keys",
    "Query": "dsbackup.datastores.query",
    "open_datastore": "dsbackup.datastores",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dsbackup' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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

# migration (imported on first use: `import dsbackup` stays light)
_MIGRATION_NAMES = ("FilterConfig", "MigrationConfig", "MigrationManager", "MigrationPlan",
                    "MigrationResult", "MigrationStep", "MigrationType", "TransformationConfig")
_getattr_before_migration = globals().get("__getattr__")


def __getattr__(name: str):  # noqa: E302 - PEP 562 lazy attributes
    if name in _MIGRATION_NAMES:
        from dsbackup import migration

        return getattr(migration, name)
    if _getattr_before_migration is not None:
        return _getattr_before_migration(name)
    raise AttributeError(f"module 'dsbackup' has no attribute {name!r}")


__all__ += list(_MIGRATION_NAMES)
