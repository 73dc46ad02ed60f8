"""Journaled, resumable, reversible datastore migrations. See docs/MIGRATION.md."""

from dsbackup.migration.config import MigrationConfig
from dsbackup.migration.journal import JournalCorrupt
from dsbackup.migration.manager import MigrationManager
from dsbackup.migration.plan import (
    FilterConfig,
    MigrationPlan,
    MigrationStep,
    MigrationType,
    TransformationConfig,
    load_plan,
)
from dsbackup.migration.result import MigrationResult, RollbackReport, StepResult
from dsbackup.migration.runtime import ProgressEvent
from dsbackup.migration.shipped import SHIPPED, shipped_plan
from dsbackup.migration.transforms import register_key_transform, register_value_transform
from dsbackup.migration.validators import register_validator

__all__ = [
    "SHIPPED",
    "FilterConfig",
    "JournalCorrupt",
    "MigrationConfig",
    "MigrationManager",
    "MigrationPlan",
    "MigrationResult",
    "MigrationStep",
    "MigrationType",
    "ProgressEvent",
    "RollbackReport",
    "StepResult",
    "TransformationConfig",
    "load_plan",
    "register_key_transform",
    "register_validator",
    "register_value_transform",
    "shipped_plan",
]
