"""The layer that actually makes, checks and reads archives, behind a small interface.

The scheduler talks only to a :class:`BackupRunner`; the default one, :class:`ManagerRunner`,
drives ``dsbackup.BackupManager`` (imported when first used). Tests and embedders can pass their
own runner to ``BackupScheduler(config, runner=...)``.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from dsbackup.errors import SchedulerError
from dsbackup.storage import as_location


@dataclass
class RunResult:
    path: Path
    created: datetime
    fingerprint: str | None
    size: int | None  # archive bytes on disk
    keys: int | None
    parent: str | None = None  # parent fingerprint for incremental archives
    duration_s: float | None = None
    # files of the store left out of the archive (foreign with skip_foreign, or unreadable):
    # what a warning says, None when there were none (the CLI's `backup` exits 1 for them)
    incomplete: str | None = None


@dataclass
class VerifyResult:
    ok: bool
    errors: list[str] = field(default_factory=list)
    bad_chunks: list[int] = field(default_factory=list)
    missing_parent: bool = False  # an archive of the parent chain could not be found
    # every chunk member the archive describes was hashed, those its references resolve to
    # in the parent chain included (a quick, sampled or deep verify with the key; not the
    # sealed walk of an archive whose key is missing): what lets an incremental on it skip
    # its own read of those members (trust_parent, docs/SCHEDULER.md)
    chain_checked: bool = False
    # the archive and its parents when chain_checked (its report's checked_chain): passed
    # back as `trusted_chain` to the quick verify of an incremental made on it
    checked_chain: list[str] = field(default_factory=list)


@dataclass
class ArchiveInfo:
    path: Path
    created: datetime
    fingerprint: str | None
    parent: str | None


class BackupRunner(Protocol):
    def run(self, schedule: Any, archive_path: Path, cancel_event: threading.Event,
            parent: Path | None = None, *, trust_parent: bool = False) -> RunResult:
        """Back up ``schedule.source`` to ``archive_path``; raise a DsBackupError on failure.
        ``trust_parent``: the parent's chain has just passed a verify that hashed every
        member it describes, so the backup's check need not read them again
        (BackupConfig.trust_parent). A runner may leave it out of its signature; it is then
        never passed."""
        ...

    def verify(self, path: Path, deep: bool, sample: float | None, *,
               trusted_chain: list[str] | None = None) -> VerifyResult:
        """Verify an archive. ``trusted_chain``: the ``checked_chain`` of a verify that has
        just passed on this archive's parent; a quick verify then does not read the members
        its references resolve to there again. A runner may leave it out of its signature;
        it is then never passed."""
        ...

    def inspect(self, path: Path) -> ArchiveInfo: ...


def parent_fingerprint(value: Any) -> str | None:
    """The parent fingerprint from a manifest's ``parent`` (a string, or a mapping with a
    ``fingerprint`` entry), or None for a full backup."""
    if isinstance(value, dict):
        value = value.get("fingerprint")
    return str(value) if value else None


def _manager_api() -> tuple[Any, Any]:
    try:
        from dsbackup.engine.backup import BackupManager
        from dsbackup.engine.config import BackupConfig
    except ImportError as exc:  # the backup engine is not built or not installed
        raise SchedulerError(f"the backup engine is not available: {exc}") from exc
    return BackupManager, BackupConfig


def _incomplete(stats: Any) -> str | None:
    if stats is None or not stats.incomplete:
        return None
    return (f"not backed up: {stats.foreign_files} foreign files, {stats.unreadable_files} "
            f"files that vanished or could not be read (first: "
            f"{', '.join(stats.skipped_files)})")


class ManagerRunner:
    """Runs backups with ``dsbackup.BackupManager``."""

    def _key(self, spec: dict[str, str]) -> Any:
        """Key material of a schedule's ``encryption`` (a passphrase_file or key_file path),
        loaded once per runner and added to the process's keyring, so that verifying,
        inspecting and pruning its archives find it."""
        from dsbackup.archive import crypto

        cache = self.__dict__.setdefault("_keys", {})
        ident = tuple(sorted(spec.items()))
        if ident not in cache:
            if "key_file" in spec:
                material = crypto.load_key_file(spec["key_file"])
            else:
                material = crypto.load_passphrase_file(spec["passphrase_file"])
            crypto.add_to_keyring(material)
            cache[ident] = material
        return cache[ident]

    def _manager(self, backup_config: Any = None, *, trust_parent: bool = False) -> Any:
        manager_cls, config_cls = _manager_api()
        if backup_config is None:
            cfg = config_cls(trust_parent=trust_parent)
        elif isinstance(backup_config, config_cls):
            cfg = (dataclasses.replace(backup_config, trust_parent=True) if trust_parent
                   else backup_config)
        else:
            try:
                kw = dict(backup_config)
                if isinstance(kw.get("encryption"), dict):
                    kw["encryption"] = self._key(kw["encryption"])
                if trust_parent:
                    kw["trust_parent"] = True
                cfg = config_cls(**kw)
            except TypeError as exc:
                raise SchedulerError(f"invalid backup settings: {exc}") from exc
        return manager_cls(cfg)

    def run(self, schedule: Any, archive_path: Path, cancel_event: threading.Event,
            parent: Path | None = None, *, trust_parent: bool = False) -> RunResult:
        mgr = self._manager(schedule.backup_config, trust_parent=trust_parent)
        meta = mgr.create_backup(schedule.source, archive_path, parent=parent, cancel=cancel_event)
        path = as_location(getattr(meta, "path", None) or archive_path)
        return RunResult(
            path=path, created=meta.timestamp, fingerprint=meta.fingerprint,
            size=path.stat().st_size if isinstance(path, Path) else meta.compressed_size, keys=meta.total_keys, parent=parent_fingerprint(meta.parent),
            duration_s=meta.statistics.duration_s if getattr(meta, "statistics", None) else None,
            incomplete=_incomplete(getattr(meta, "statistics", None)),
        )

    def verify(self, path: Path, deep: bool, sample: float | None, *,
               trusted_chain: list[str] | None = None) -> VerifyResult:
        report = self._manager().verify_backup(path, deep=deep, sample=sample,
                                               trusted_chain=trusted_chain)
        checked = bool(report.ok) and report.mode != "quick-sealed" and bool(
            report.checked_chain)
        return VerifyResult(bool(report.ok), list(report.errors),
                            list(getattr(report, "bad_chunks", []) or []),
                            "parent" in (getattr(report, "bad_parts", None) or []),
                            chain_checked=checked,
                            checked_chain=list(report.checked_chain) if checked else [])

    def inspect(self, path: Path) -> ArchiveInfo:
        meta = self._manager().inspect(path)
        return ArchiveInfo(as_location(path), meta.timestamp, meta.fingerprint,
                           parent_fingerprint(meta.parent))
