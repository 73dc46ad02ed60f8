"""BackupManager: create, restore, verify and inspect backups (the public Python API)."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsbackup.archive import guard
from dsbackup.archive.crypto import KeyMaterial, using_key
from dsbackup.engine.config import BackupConfig
from dsbackup.engine.full import plan_full
from dsbackup.engine.manifest import go_metadata, metadata_from_reader
from dsbackup.engine.plan import ProgressCallback
from dsbackup.engine.restore_journal import refuse_unfinished_restore
from dsbackup.engine.targetlock import TargetLock, store_path
from dsbackup.engine.write import write_archive
from dsbackup.errors import BackupError, Cancelled, ConfigError, DsBackupError, IntegrityError
from dsbackup.metadata import BackupMetadata, RestoreResult
from dsbackup.pipeline.scanchoice import PARALLEL_MIN_BYTES, PARALLEL_SCHEMES
from dsbackup.storage import as_location, display, is_remote, is_stream

if TYPE_CHECKING:
    from dsbackup.archive.verify import VerifyReport
    from dsbackup.datastores.flatfs_audit import FileAudit

# Not imported here (start-up of `dsbackup backup`, docs/PERFORMANCE.md): the archive reader,
# the verifier (the check before the rename imports it), flatfs's audit and incremental code;
# each where it is used. tests/cli/test_main.py lists them.

log = logging.getLogger(__name__)

def _open_source(source: Any) -> tuple[Any, bool]:
    """(datastore, owned): URIs are opened read-only here and closed after the backup."""
    if isinstance(source, (str, os.PathLike)):
        from dsbackup.datastores import open_datastore

        return open_datastore(str(source), readonly=True), True
    return source, False


class _Deadline:
    """Sets `cancel` when the timeout passes; remembers that it did."""

    def __init__(self, cancel: threading.Event, timeout: float | None) -> None:
        self.fired = False
        self._timer: threading.Timer | None = None
        if timeout:
            def fire() -> None:
                self.fired = True
                cancel.set()
            self._timer = threading.Timer(timeout, fire)
            self._timer.daemon = True
            self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class BackupManager:
    """Back up, restore, verify and inspect datastore archives. See docs/API.md."""

    def __init__(self, config: BackupConfig | None = None) -> None:
        self.config = config or BackupConfig()
        self._metrics: dict[str, float] = {
            "backups_total": 0, "backups_failed": 0, "backup_bytes_total": 0,
            "backup_records_total": 0, "backup_seconds_total": 0.0, "restores_total": 0,
            "restores_failed": 0, "restore_bytes_total": 0, "verifies_total": 0,
            "verify_failures_total": 0,
        }
        self._lock = threading.Lock()

    # -- backup ------------------------------------------------------------------------------

    def create_backup(
        self,
        source: Any,
        path: str | os.PathLike[str],
        *,
        parent: str | os.PathLike[str] | None = None,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        parent_dirs: list[str | os.PathLike[str]] | None = None,
        overwrite: bool | None = None,
        format: str = "dsbackup",
        key: KeyMaterial | None = None,
    ) -> BackupMetadata:
        """Back up `source` (a datastore URI or object) to the archive `path`.

        The archive is written to a temporary file beside `path`, checked, fsynced and renamed:
        `path` never holds a partial archive. Raises a DsBackupError subclass on failure;
        Cancelled (exit code 130) when `cancel` is set or the configured timeout passes.
        With `parent` (an archive) the backup is incremental: unchanged chunks are referenced
        in the parent chain (found beside the parent or in `parent_dirs`), see
        dsbackup.engine.incremental. ``format="go"`` writes the Go tool's format instead
        (dsbackup.compat.gowriter; full backups only).

        The archive may not lie inside the source store (PathConflictError). A file already at
        `path` is not replaced (ArchiveExistsError) unless `overwrite` (default: the config's
        ``overwrite``, False); an archive others use as their parent is never replaced.

        The config's ``encryption`` (key material) writes an encrypted archive; `key` is the
        key of encrypted parents when this archive itself is not to be encrypted (refused:
        an incremental of an encrypted parent must be encrypted; docs/ENCRYPTION.md).
        """
        cfg = self.config
        if overwrite is not None and overwrite != cfg.overwrite:
            cfg = dataclasses.replace(cfg, overwrite=overwrite)
        if format not in ("dsbackup", "go"):
            raise ConfigError(f"archive format must be 'dsbackup' or 'go', got {format!r}")
        if format == "go" and cfg.codec != "gzip":
            raise ConfigError("--format go has no zstd codec: --codec zstd needs the dsbackup "
                              "format")
        if format == "go" and cfg.encryption is not None:
            raise ConfigError("--format go cannot be encrypted: --encrypt needs the dsbackup "
                              "format")
        if parent is not None and is_stream(parent):
            raise ConfigError("--parent cannot be '-': the parent chain is opened by name for "
                              "random access; give its path or s3:// location")
        if format == "go" and is_remote(path):
            raise ConfigError(f"{path}: --format go writes local files only")
        if format == "go" and (parent is not None or cfg.include_metadata):
            raise ConfigError("--format go writes full backups without a key catalog: "
                              "--parent and --include-metadata need the dsbackup format")
        if parent is not None and not is_remote(parent):
            from dsbackup.compat.goformat import refuse_go_archive

            refuse_go_archive(parent, "--parent")
        if cfg.resume:
            _check_resumable(cfg, path, format)
        cancel = cancel or threading.Event()
        deadline = _Deadline(cancel, cfg.timeout)
        t0 = time.perf_counter()
        # the source's lock, shared, while it is read: a restore or migration into it is
        # refused (exit 4), and a backup of a store being written (half a store) too
        reading = TargetLock(source, f"backup to {path}", shared=True)
        try:
            guard.check_archive_outside(path, [("source", source)])
            reading.acquire()
            refuse_unfinished_restore(store_path(source), "back it up")
            guard.check_new_archive(path, overwrite=cfg.overwrite,
                                    inputs=[parent] if parent is not None else [],
                                    parent_dirs=parent_dirs or [])
        except BaseException as exc:
            reading.release()
            deadline.stop()
            if isinstance(exc, DsBackupError):
                self._count("backups_failed")
            raise
        try:  # an incremental opens a URI source itself (LMDB: natively, in this process)
            ds, owned = _open_source(source) if parent is None else (source, False)
        except BaseException:
            reading.release()
            deadline.stop()
            raise
        try:
            foreign = (None if parent is not None and format == "dsbackup"
                       and _flatfs_incremental_applies(source, cfg)  # audits from its listing
                       else audit_source(ds, cfg.skip_foreign))
            if format == "go":
                meta = _create_go(ds, Path(path), cfg, cancel, t0)
            elif parent is not None:
                from dsbackup.engine.incremental import create_incremental

                with using_key(cfg.encryption or key):  # the parents' key, the check's
                    meta = create_incremental(ds, as_location(path), as_location(parent), cfg,
                                              parent_dirs=parent_dirs, progress=progress,
                                              cancel=cancel, t0=t0)
            else:
                with using_key(cfg.encryption):  # the check before the rename reads it
                    meta = self._create(ds, as_location(path), cfg, progress, cancel, t0)
        except Cancelled:
            self._count("backups_failed")
            kept = _kept_temp(path) if cfg.resume else None
            tail = "" if kept is None else (f"; its temporary file {kept.name} is kept: "
                                            "backup --resume continues it")
            # a stream's reader already has what was written: say so, not "nothing"
            left = ("the archive stream on standard output was cut: what its reader received "
                    "is not a valid archive" if is_stream(path)
                    else "nothing was written at the archive path")
            if deadline.fired:
                raise Cancelled(f"{path}: backup timed out after {cfg.timeout}s; {left}{tail}"
                                ) from None
            raise Cancelled(f"{path}: backup cancelled; {left}{tail}") from None
        except DsBackupError:
            self._count("backups_failed")
            raise
        except OSError as exc:
            self._count("backups_failed")
            raise BackupError(f"{path}: {exc}") from exc
        finally:
            deadline.stop()
            if owned:
                ds.close()
            reading.release()
        s = meta.statistics
        if foreign is not None:
            s.foreign_files += foreign.count
            s.temp_files += foreign.temp_files
        s.skipped_files = [*(foreign.examples if foreign is not None else ()), *s.skipped_files][:10]
        with self._lock:
            m = self._metrics
            m["backups_total"] += 1
            m["backup_bytes_total"] += meta.total_size
            m["backup_records_total"] += meta.total_keys
            m["backup_seconds_total"] += meta.statistics.duration_s
            m["last_backup_timestamp"] = meta.timestamp.timestamp()
            m["last_backup_seconds"] = meta.statistics.duration_s
        return meta

    def _create(self, ds: Any, path: Path, cfg: BackupConfig,
                progress: ProgressCallback | None, cancel: threading.Event,
                t0: float) -> BackupMetadata:
        plan, stream = plan_full(ds, path, cfg, parallel_min_bytes=PARALLEL_MIN_BYTES,
                                 parallel_schemes=PARALLEL_SCHEMES, progress=progress,
                                 cancel=cancel, t0=t0, check=_quick_check)
        if cfg.resume:
            from dsbackup.engine.resume import plan_resumed

            resumed = plan_resumed(plan, stream)
            if resumed is None:
                log.warning("%s: no temporary file of an interrupted backup to resume; "
                            "starting a new backup", path)
            elif isinstance(resumed, BackupMetadata):
                return resumed  # a whole archive, checked and put in place
            else:
                plan, stream = resumed
        return write_archive(plan, stream)

    # -- restore / verify / inspect ----------------------------------------------------------

    def restore_backup(self, path: str | os.PathLike[str], target: Any, *,
                       key: KeyMaterial | None = None, **options: Any) -> RestoreResult:
        """Restore an archive into `target` (URI or datastore). See dsbackup.engine.restore.
        `key`: for encrypted archives (default: the config's ``encryption``)."""
        from dsbackup.engine.restore import restore_archive

        try:
            with using_key(key or self.config.encryption):
                result = restore_archive(path, target,
                                         workers=self.config.effective_workers, **options)
        except DsBackupError:
            self._count("restores_failed")
            raise
        with self._lock:
            self._metrics["restores_total"] += 1
            self._metrics["restore_bytes_total"] += result.bytes_written
        return result

    def verify_backup(self, path: str | os.PathLike[str], deep: bool = True,
                      sample: float | None = None, *,
                      parent_dirs: list[str | os.PathLike[str]] | None = None,
                      check_blocks: bool = False,
                      key: KeyMaterial | None = None,
                      trusted_chain: list[str] | None = None) -> VerifyReport:
        """Check an archive. quick (deep=False): structure and every member checksum; deep:
        also inflate and parse every chunk; sample=f: quick plus deep on a fraction f.
        Incremental archives are checked with their parent chain (`parent_dirs`);
        `check_blocks` re-hashes /blocks values against their keys (deep); `trusted_chain`:
        a chain just verified (the `checked_chain` of its report), whose members a quick
        verify of an incremental on it does not read again. An archive of the Go tool's
        format (docs/GOFORMAT.md) is checked as `dsbackup verify` checks it: always deep."""
        from dsbackup.archive.verify import verify_archive
        from dsbackup.compat.gohead import is_go_archive

        if is_go_archive(path):  # as `dsbackup verify` and restore_backup take it: always deep
            from dsbackup.compat.gocompat import verify_go

            report = verify_go(path)
        else:
            with using_key(key or self.config.encryption):
                report = verify_archive(path, deep=deep, sample=sample,
                                        threads=self.config.effective_workers,
                                        parent_dirs=parent_dirs, check_blocks=check_blocks,
                                        trusted_chain=trusted_chain)
        with self._lock:
            self._metrics["verifies_total"] += 1
            if not report.ok:
                self._metrics["verify_failures_total"] += 1
        return report

    def inspect(self, path: str | os.PathLike[str], *,
                key: KeyMaterial | None = None) -> BackupMetadata:
        """Metadata from the manifest and summary (O(1): reads no chunk). An encrypted
        archive needs `key` (default: the config's ``encryption``). An archive of the Go
        tool's format: its metadata.json and member count (docs/GOFORMAT.md §3)."""
        from dsbackup.archive.reader import ArchiveReader
        from dsbackup.compat.gohead import is_go_archive

        if is_go_archive(path):  # as `dsbackup inspect` reads it
            from dsbackup.compat.gocompat import inspect_go

            return inspect_go(path)
        with ArchiveReader(path, key=key or self.config.encryption) as r:
            return metadata_from_reader(r)

    def get_metrics(self) -> dict[str, float]:
        with self._lock:
            return dict(self._metrics)

    def _count(self, name: str) -> None:
        with self._lock:
            self._metrics[name] += 1


def _check_resumable(cfg: BackupConfig, path: Any, format: str) -> None:
    """--resume continues local dsbackup-format backups (docs/FORMAT.md §11.5)."""
    why = ("--format go" if format != "dsbackup"
           else "an archive that is not a local file" if is_remote(path) or is_stream(path)
           else None)
    if why is not None:
        raise ConfigError(f"--resume continues only dsbackup-format backups into a local "
                          f"file, not {why}; leave out --resume")


def _create_go(ds: Any, path: Path, cfg: BackupConfig, cancel: threading.Event,
               t0: float) -> BackupMetadata:
    """A backup in the Go tool's format (see dsbackup.compat.gowriter)."""
    from dsbackup.compat.gowriter import DEFAULT_GO_CHUNK_SIZE, write_go_archive

    created = datetime.now(timezone.utc)
    chunk_size = cfg.chunk_size or DEFAULT_GO_CHUNK_SIZE
    r = write_go_archive(ds, path, level=cfg.compression_level, chunk_size=chunk_size,
                         exclude=list(cfg.exclude_patterns), threads=cfg.effective_workers,
                         cancel=cancel, check=cfg.verify_integrity, overwrite=cfg.overwrite)
    meta = go_metadata(ds, path, cfg, r, created, chunk_size, t0)
    if getattr(ds, "scheme", None) == "kubo" and not cfg.datastore_only:
        meta.node_warning = GO_NODE_WARNING
    return meta


# a kubo: backup otherwise holds the node's files: said, not silently dropped
GO_NODE_WARNING = ("the Go format holds datastore records only: the node's own files (config "
                   "with its identity, keystore/, datastore_spec, version) are not in this "
                   "archive, and restoring it makes no Kubo repository; back up the whole "
                   "node in the dsbackup format (or say --datastore-only)")


_AUDITED_SCHEMES = ("flatfs", "helia", "fsds", "kubo")


def _flatfs_incremental_applies(source: Any, cfg: BackupConfig) -> bool:
    from dsbackup.engine import flatfs_incremental

    return flatfs_incremental.applies(source, cfg)


def audit_source(source: Any, skip_foreign: bool) -> FileAudit | None:
    """Account for every file of a file-per-key store before it is backed up: files that
    are not of its layout raise BackupError (exit 2) naming them and the likely right URI,
    unless ``skip_foreign``. A URI (an incremental's source) is opened read-only for it
    when its scheme maps files to keys. None for a store that maps no files to keys (LMDB,
    LevelDB, SQLite ...: nothing to audit)."""
    ds, owned = source, False
    if isinstance(source, (str, os.PathLike)):
        from dsbackup.datastores.registry import detect_scheme, parse_uri

        scheme, path, _ = parse_uri(os.fspath(source))
        if (scheme or detect_scheme(path)) not in _AUDITED_SCHEMES:
            return None
        ds, owned = _open_source(source)
    try:
        fn = getattr(ds, "audit_files", None)
        audit = fn() if fn is not None else None
    finally:
        if owned:
            ds.close()
    if audit is not None and audit.count and not skip_foreign:
        where = getattr(ds, "uri", str(source))
        raise BackupError(audit.message(where) + "; nothing was written (pass "
                          "--skip-foreign to back up the rest: the backup then ends with "
                          "warnings, exit 1)")
    return audit


def _kept_temp(path: Any) -> Path | None:
    """The temp file a cancelled resumed run kept for the next --resume (this process's, for
    the local archive `path`; dsbackup.archive.writer), or None."""
    if is_remote(path) or is_stream(path):
        return None
    final = Path(path)
    try:
        names = os.listdir(final.parent)
    except OSError:
        return None
    from dsbackup.storage.tempfiles import temp_prefix

    mine = f"{temp_prefix(final)}{os.getpid()}-"  # (a long name's is shortened)
    return next((final.parent / n for n in sorted(names) if n.startswith(mine)), None)


def _quick_check(tmp_path: Any) -> None:
    """A temp file's path, or a Source over the bytes an upload sent."""
    from dsbackup.archive.verify import verify_archive

    report = verify_archive(tmp_path, deep=False, threads=2)
    if not report.ok:
        raise IntegrityError(f"{display(tmp_path)}: the archive just written failed its check: "
                             + "; ".join(report.errors[:3]))
