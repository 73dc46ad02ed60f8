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

# migration
from dsbackup.migration import (  # noqa: E402
    FilterConfig,
    MigrationConfig,
    MigrationManager,
    MigrationPlan,
    MigrationResult,
    MigrationStep,
    MigrationType,
    TransformationConfig,
)

__all__ += ["FilterConfig", "MigrationConfig", "MigrationManager", "MigrationPlan",
            "MigrationResult", "MigrationStep", "MigrationType", "TransformationConfig"]
