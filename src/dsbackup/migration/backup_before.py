"""The pre-migration archive (``backup_before``): the source archived before any step
writes, so that a rollback can restore it."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dsbackup.errors import ConfigError, MigrationError
from dsbackup.migration.config import MigrationConfig
from dsbackup.migration.journal import Journal, JournalState
from dsbackup.migration.plan import MigrationPlan
from dsbackup.storage import S3Location, as_location, is_file

__all__ = ["backup_before"]

log = logging.getLogger(__name__)


def backup_before(plan: MigrationPlan, cfg: MigrationConfig, src: Any,
                  journal: Journal | None, state: JournalState,
                  stores: dict[str, Any] | None = None) -> str:
    """Archive the untouched source (``backup_before``) and journal its path; a resumed run
    reuses the archive its first attempt made. Returns the archive's path."""
    if state.backup_path and is_file(state.backup_path):  # a file or an object
        return state.backup_path  # resumed run: the archive of the untouched source
    try:
        from dsbackup.engine.backup import BackupConfig, BackupManager
    except ImportError:
        raise MigrationError("backup_before needs the backup layer "
                             "(dsbackup.engine.backup.BackupManager), which is not available in "
                             "this installation") from None
    if cfg.backup_dir is not None:  # a directory, or an s3://BUCKET/PREFIX/
        loc = as_location(cfg.backup_dir)
        bdir: Any = S3Location(loc.bucket, loc.prefix) if isinstance(loc, S3Location) else loc
    elif journal is not None:
        bdir = journal.path.parent
    else:
        raise ConfigError("backup_before needs backup_dir (or state_dir) when the target "
                          "has no filesystem path")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = bdir / f"{plan.id}-{plan.version}-pre-{stamp}.tar.gz"
    from dsbackup.archive.guard import check_archive_outside

    # the archive may lie in no store of the run (the steps would write over it)
    check_archive_outside(path, list((stores or {"source": src}).items()))
    if isinstance(bdir, Path):
        bdir.mkdir(parents=True, exist_ok=True)
    meta = BackupManager(BackupConfig()).create_backup(src, path)
    final = str(getattr(meta, "path", None) or path)
    if journal is not None:
        journal.append({"t": "backup", "path": final})
    log.info("pre-migration archive of %s: %s", getattr(src, "uri", src), final)
    return final
