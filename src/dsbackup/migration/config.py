"""``MigrationConfig``: how a plan runs (not what it does)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from dsbackup.errors import ConfigError

__all__ = ["MigrationConfig"]


@dataclass
class MigrationConfig:
    """Settings of one run.

    - ``batch_size``: records per read/write batch (also bounded by ``batch_bytes``).
    - ``timeout``: seconds for the whole run; past it the run stops with
      :class:`~dsbackup.errors.Cancelled`, keeping its journal so it can be resumed.
    - ``verify_migration``: after each copy/move/transform-into-target step, re-read and
      compare source and target before going on (a move deletes from its source only after).
    - ``backup_before``: archive the source with the BackupManager first; the archive path is
      in the result and is what a rollback restores when the plan has no rollback steps.
    - ``dry_run``: read everything, write nothing (no journal, no temp keys, no stamp).
    - ``resume``: continue from an unfinished journal (otherwise such a journal is an error).
    - ``rollback_on_failure``: run the rollback when a step fails (not on timeout/cancel,
      which stay resumable).
    - ``state_dir``: where journal and stamp go; default ``<target path>.dsmigrate/``.
    - ``backup_dir``: where the pre-migration archive goes; default the state directory.
    - ``checkpoint_interval``: seconds between journal checkpoints within a step (a
      checkpoint syncs the written store first); ``0`` checkpoints after every batch.
    - ``sample_size``: changes listed per step in a dry-run report.
    """

    batch_size: int = 10_000
    batch_bytes: int = 32 << 20
    timeout: float | None = None
    verify_migration: bool = True
    backup_before: bool = False
    dry_run: bool = False
    resume: bool = True
    rollback_on_failure: bool = True
    state_dir: str | Path | None = None
    backup_dir: str | Path | None = None
    checkpoint_interval: float = 1.0
    sample_size: int = 10

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        # at most 2^32: the native copy holds both in C unsigned longs (an OverflowError there
        # crashed the step); a batch is bounded by batch_bytes long before either limit
        if not _is_int(self.batch_size) or not 1 <= self.batch_size <= 1 << 32:
            raise ConfigError(f"batch_size must be an integer from 1 to {1 << 32}, got "
                              f"{self.batch_size!r}")
        if not _is_int(self.batch_bytes) or not 1 <= self.batch_bytes <= 1 << 32:
            raise ConfigError(f"batch_bytes must be an integer from 1 to {1 << 32}, got "
                              f"{self.batch_bytes!r}")
        if self.timeout is not None and (not _is_number(self.timeout)
                                         or not 0 < self.timeout < math.inf):  # nan too
            raise ConfigError(f"timeout must be a positive number of seconds, got "
                              f"{self.timeout!r}")
        # a string or a boolean here failed later, as an internal error (TypeError)
        if not _is_number(self.checkpoint_interval) or not 0 <= self.checkpoint_interval < \
                math.inf:
            raise ConfigError(f"checkpoint_interval must be a number of seconds >= 0, got "
                              f"{self.checkpoint_interval!r}")
        if not _is_int(self.sample_size) or self.sample_size < 0:
            raise ConfigError(f"sample_size must be an integer >= 0, got {self.sample_size!r}")
        for name in ("state_dir", "backup_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise ConfigError(f"{name} must be a path (a string), got {value!r}")
        for name in ("verify_migration", "backup_before", "dry_run", "resume",
                     "rollback_on_failure"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def with_overrides(self, overrides: dict[str, Any]) -> MigrationConfig:
        """A copy with a plan's ``[config]`` table applied; ``dry_run`` is only ever turned
        on (a plan cannot make a dry run write)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in overrides.items():
            if k == "dry_run":
                values[k] = bool(values[k] or v)
            else:
                values[k] = v
        return MigrationConfig(**values)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
