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
