"""BackupManager: create, restore, verify and inspect backups (the public Python API)."""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dsbackup._ext.compress import ENGINES
from dsbackup._version import __version__
from dsbackup.archive import guard
from dsbackup.archive.crypto import KeyMaterial, using_key
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.verify import VerifyReport, verify_archive
from dsbackup.archive.writer import ArchiveWriter
from dsbackup.datastores.flatfs_audit import FileAudit
from dsbackup.datastores.registry import scheme_and_location
from dsbackup.engine import flatfs_incremental
from dsbackup.engine.config import BackupConfig
from dsbackup.engine.nodefiles import holds_private_key, node_snapshot, private_key_warning
from dsbackup.errors import BackupError, Cancelled, ConfigError, DsBackupError, IntegrityError
from dsbackup.metadata import (
    BackupMetadata,
    BackupStatistics,
    Progress,
    RestoreResult,
    parse_timestamp,
)
from dsbackup.pipeline.central import ChunkSettings, ScanStats, central_chunks
from dsbackup.pipeline.parallel import ParallelScan
from dsbackup.pipeline.scanchoice import PARALLEL_MIN_BYTES, PARALLEL_SCHEMES

log = logging.getLogger(__name__)

ProgressCallback = Callable[[Progress], None]


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
        if format == "go" and cfg.encryption is not None:
            raise ConfigError("--format go cannot be encrypted: --encrypt needs the dsbackup "
                              "format")
        if format == "go" and (parent is not None or cfg.include_metadata):
            raise ConfigError("--format go writes full backups without a key catalog: "
                              "--parent and --include-metadata need the dsbackup format")
        cancel = cancel or threading.Event()
        deadline = _Deadline(cancel, cfg.timeout)
        t0 = time.perf_counter()
        try:
            guard.check_archive_outside(path, [("source", source)])
            guard.check_new_archive(path, overwrite=cfg.overwrite,
                                    inputs=[parent] if parent is not None else [],
                                    parent_dirs=parent_dirs or [])
        except DsBackupError:
            deadline.stop()
            self._count("backups_failed")
            raise
        # an incremental opens a URI source itself (LMDB: natively, in this process)
        ds, owned = _open_source(source) if parent is None else (source, False)
        try:
            foreign = (FileAudit() if parent is not None and format == "dsbackup"
                       and flatfs_incremental.applies(source, cfg)  # audits from its listing
                       else audit_source(ds, cfg.skip_foreign))
            if format == "go":
                meta = _create_go(ds, Path(path), cfg, cancel, t0)
            elif parent is not None:
                from dsbackup.engine.incremental import create_incremental

                with using_key(cfg.encryption or key):  # the parents' key, the check's
                    meta = create_incremental(ds, Path(path), Path(parent), cfg,
                                              parent_dirs=parent_dirs, progress=progress,
                                              cancel=cancel, t0=t0)
            else:
                with using_key(cfg.encryption):  # the check before the rename reads it
                    meta = self._create(ds, Path(path), cfg, progress, cancel, t0)
        except Cancelled:
            self._count("backups_failed")
            if deadline.fired:
                raise Cancelled(f"{path}: backup timed out after {cfg.timeout}s; nothing was "
                                "written at the archive path") from None
            raise Cancelled(f"{path}: backup cancelled; nothing was written at the archive "
                            "path") from None
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
        s = meta.statistics
        s.foreign_files += foreign.count
        s.skipped_files = [*foreign.examples, *s.skipped_files][:10]
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
        approx_count = _safe(ds, "approx_count")
        approx_size = _safe(ds, "approx_size")
        chunk_size = cfg.resolve_chunk_size(approx_count, approx_size)
        mean_record = (approx_size / approx_count) if approx_count and approx_size else 256.0
        settings = ChunkSettings(chunk_size, cfg.chunk_max_bytes, cfg.compression_level,
                                 tuple(cfg.exclude_patterns), cfg.include_metadata,
                                 target_chunk_bytes=max(4096, int(chunk_size * mean_record)))
        scheme, location = scheme_and_location(ds)
        workers = cfg.effective_workers
        # starting worker processes costs more than a small store takes to scan centrally
        parallel = (workers > 1 and scheme in PARALLEL_SCHEMES
                    and bool(getattr(ds, "parallel_readable", False))
                    and (approx_size is None or approx_size >= PARALLEL_MIN_BYTES))
        created = datetime.now(timezone.utc)
        manifest = {
            "format": "dsbackup",
            "version": 1,
            "tool": f"dsbackup {__version__}",
            "created": created.isoformat(),
            "source": {"uri": getattr(ds, "uri", type(ds).__name__), "backend": scheme or
                       type(ds).__name__, "approx_records": approx_count,
                       "approx_bytes": approx_size},
            "settings": {
                "compression_level": cfg.compression_level,
                "engine": ENGINES[cfg.compression_level],
                "chunk_size": chunk_size,
                "chunk_max_bytes": cfg.chunk_max_bytes,
                "exclude_patterns": list(cfg.exclude_patterns),
                "include_metadata": cfg.include_metadata,
            },
            "parent": None,
        }
        stats = ScanStats()
        if parallel:
            kind = "lmdb" if scheme == "lmdb" else "datastore"
            loc = location if kind == "lmdb" else ds.uri
            chunks: Any = ParallelScan(kind, loc, settings, workers, cancel=cancel, stats=stats,
                                       consistent=(kind == "lmdb"))
            mode = "parallel"
        else:
            chunks = central_chunks(ds, settings, threads=workers, stats=stats, cancel=cancel)
            mode = "central"
        node = None if cfg.datastore_only else node_snapshot(ds)  # kubo: the node's files
        if node is not None:
            manifest["node"] = node.manifest
        records = nbytes = 0
        cpu0 = _cpu_seconds()
        with ArchiveWriter(path, manifest=manifest, level=cfg.compression_level,
                           created=created.timestamp(), overwrite=cfg.overwrite,
                           node=None if node is None else node.data,
                           key=cfg.encryption) as writer:
            for c in chunks:
                if cancel.is_set():
                    raise Cancelled("backup cancelled")
                writer.add_chunk(c, c.catalog_body, c.catalog_xxh3)
                records += c.record_count
                nbytes += c.raw_bytes
                if progress is not None:
                    progress(Progress(records, nbytes, writer.chunk_count,
                                      time.perf_counter() - t0, approx_count, approx_size))
            if cancel.is_set():
                raise Cancelled("backup cancelled")
            duration = time.perf_counter() - t0
            summary = {
                "duration_s": round(duration, 6),
                "excluded_records": stats.excluded_records,
                "excluded_bytes": stats.excluded_bytes,
                "mode": mode,
                "workers": workers if parallel else 1,
                "snapshot": getattr(chunks, "snapshot_id", None),
                "cpu_s": round(_cpu_seconds() - cpu0 + stats.worker_cpu_s, 6),
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "worker_peak_rss_bytes": stats.worker_peak_rss,
                "spilled_chunks": stats.spilled_chunks,
            }
            check = _quick_check if cfg.verify_integrity else None
            written = writer.finish(summary, before_rename=check)
        stats_out = BackupStatistics(
            duration_s=time.perf_counter() - t0, keys_processed=written.records,
            bytes_processed=written.raw_bytes, bytes_compressed=written.size, errors=0,
            skipped_keys=stats.excluded_records, skipped_bytes=stats.excluded_bytes,
            workers=workers if parallel else 1, mode=mode, cpu_s=summary["cpu_s"],
            unreadable_files=stats.unreadable_files,
            skipped_files=list(stats.unreadable_examples))
        return BackupMetadata(
            path=str(path), version=writer.version, timestamp=created,
            total_keys=written.records,
            total_size=written.raw_bytes, compressed_size=written.size, chunks=written.chunks,
            fingerprint=written.fingerprint,
            compression={"level": cfg.compression_level,
                         "engine": ENGINES[cfg.compression_level]},
            config={**cfg.to_dict(), "chunk_size": chunk_size}, datastore=manifest["source"],
            statistics=stats_out, parent=None, tool=manifest["tool"],
            node=manifest.get("node"),
            node_warning=None if cfg.encryption is not None else  # sealed: not readable
            private_key_warning(manifest.get("node"), node and node.files))

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
                      key: KeyMaterial | None = None) -> VerifyReport:
        """Check an archive. quick (deep=False): structure and every member checksum; deep:
        also inflate and parse every chunk; sample=f: quick plus deep on a fraction f.
        Incremental archives are checked with their parent chain (`parent_dirs`);
        `check_blocks` re-hashes /blocks values against their keys (deep)."""
        with using_key(key or self.config.encryption):
            report = verify_archive(path, deep=deep, sample=sample,
                                    threads=self.config.effective_workers,
                                    parent_dirs=parent_dirs, check_blocks=check_blocks)
        with self._lock:
            self._metrics["verifies_total"] += 1
            if not report.ok:
                self._metrics["verify_failures_total"] += 1
        return report

    def inspect(self, path: str | os.PathLike[str], *,
                key: KeyMaterial | None = None) -> BackupMetadata:
        """Metadata from the manifest and summary (O(1): reads no chunk). An encrypted
        archive needs `key` (default: the config's ``encryption``)."""
        with ArchiveReader(path, key=key or self.config.encryption) as r:
            return metadata_from_reader(r)

    def get_metrics(self) -> dict[str, float]:
        with self._lock:
            return dict(self._metrics)

    def _count(self, name: str) -> None:
        with self._lock:
            self._metrics[name] += 1


def metadata_from_reader(r: ArchiveReader) -> BackupMetadata:
    """The manifest and summary as metadata; a field of the wrong type (a crafted or foreign
    manifest: `"created": 5`) is an IntegrityError naming the field, not a crash later."""
    m, s = r.manifest, r.summary

    def field(doc: dict[str, Any], name: str, types: type | tuple[type, ...], default: Any,
              part: str) -> Any:
        value = doc.get(name, default)
        if isinstance(value, bool) or not isinstance(value, types):
            raise IntegrityError(f"{r.path}: {part} field {name!r} has the wrong type "
                                 f"({type(value).__name__})", part=part)
        return value

    created = field(m, "created", str, None, "manifest") if "created" in m else None
    try:
        timestamp = (parse_timestamp(created) if created is not None
                     else datetime.fromtimestamp(0, timezone.utc))
    except ValueError:
        raise IntegrityError(f"{r.path}: manifest field 'created' is not an ISO 8601 time: "
                             f"{created[:40]!r}", part="manifest") from None
    num = (int, float)
    settings = field(m, "settings", dict, {}, "manifest")
    return BackupMetadata(
        path=str(r.path), version=m.get("version", 0), timestamp=timestamp,
        total_keys=field(s, "records", int, 0, "summary"),
        total_size=field(s, "raw_bytes", int, 0, "summary"),
        compressed_size=r.size, chunks=r.chunk_count,
        fingerprint=field(s, "fingerprint", str, "", "summary"),
        compression={"level": settings.get("compression_level"),
                     "engine": settings.get("engine")},
        config=settings, datastore=field(m, "source", dict, {}, "manifest"),
        statistics=BackupStatistics(
            duration_s=field(s, "duration_s", num, 0.0, "summary"),
            keys_processed=s.get("records", 0),
            bytes_processed=s.get("raw_bytes", 0), bytes_compressed=r.size,
            skipped_keys=field(s, "excluded_records", int, 0, "summary"),
            skipped_bytes=field(s, "excluded_bytes", int, 0, "summary"),
            workers=field(s, "workers", int, 1, "summary"),
            mode=field(s, "mode", str, "", "summary")),
        parent=_parent_fingerprint(m.get("parent")), tool=field(m, "tool", str, "", "manifest"),
        **_node_info(r))


def _node_info(r: ArchiveReader) -> dict[str, Any]:
    """The node member as inspect shows it: counted from the member itself (checked; the
    manifest's `node` object is informative), with the private-key warning."""
    if not r.has_node:
        return {}
    files = r.node_files()
    declared = r.manifest.get("node")
    kind = declared.get("kind") if isinstance(declared, dict) else None
    node = {"kind": kind if isinstance(kind, str) else "unknown",
            "files": sum(not f.is_dir for f in files),
            "directories": sum(f.is_dir for f in files),
            "bytes": sum(len(f.data) for f in files),
            "private_key": holds_private_key(files)}
    return {"node": node, "node_warning": private_key_warning(node, files)}


def _parent_fingerprint(parent: Any) -> str | None:
    """The parent's fingerprint from a manifest `parent` object (None for a full backup)."""
    if isinstance(parent, dict):
        parent = parent.get("fingerprint")
    return str(parent) if parent else None


def _create_go(ds: Any, path: Path, cfg: BackupConfig, cancel: threading.Event,
               t0: float) -> BackupMetadata:
    """A backup in the Go tool's format (see dsbackup.compat.gowriter)."""
    from dsbackup.compat.gowriter import DEFAULT_GO_CHUNK_SIZE, write_go_archive

    created = datetime.now(timezone.utc)
    chunk_size = cfg.chunk_size or DEFAULT_GO_CHUNK_SIZE
    r = write_go_archive(ds, path, level=cfg.compression_level, chunk_size=chunk_size,
                         exclude=list(cfg.exclude_patterns), threads=cfg.effective_workers,
                         cancel=cancel, check=cfg.verify_integrity)
    skipped = getattr(ds, "skipped", None)
    scheme, _ = scheme_and_location(ds)
    stats = BackupStatistics(
        duration_s=time.perf_counter() - t0, keys_processed=r.records,
        bytes_processed=r.value_bytes, bytes_compressed=r.size, errors=0,
        skipped_keys=r.excluded_records, workers=cfg.effective_workers, mode="go",
        unreadable_files=skipped.count if skipped else 0,
        skipped_files=list(skipped.examples) if skipped else [])
    return BackupMetadata(
        path=str(path), version=0, timestamp=created, total_keys=r.records,
        total_size=r.value_bytes, compressed_size=r.size, chunks=r.chunks,
        fingerprint=r.checksum,
        compression={"level": cfg.compression_level, "engine": "gzip"},
        config={**cfg.to_dict(), "chunk_size": chunk_size, "format": "go"},
        datastore={"uri": getattr(ds, "uri", type(ds).__name__), "backend": scheme},
        statistics=stats, parent=None, tool=f"dsbackup {__version__} (Go format)")


_AUDITED_SCHEMES = ("flatfs", "helia", "fsds", "kubo")


def audit_source(source: Any, skip_foreign: bool) -> FileAudit:
    """Account for every file of a file-per-key store before it is backed up: files that
    are not of its layout raise BackupError (exit 2) naming them and the likely right URI,
    unless ``skip_foreign``. A URI (an incremental's source) is opened read-only for it
    when its scheme maps files to keys."""
    ds, owned = source, False
    if isinstance(source, (str, os.PathLike)):
        from dsbackup.datastores.registry import detect_scheme, parse_uri

        scheme, path, _ = parse_uri(os.fspath(source))
        if (scheme or detect_scheme(path)) not in _AUDITED_SCHEMES:
            return FileAudit()
        ds, owned = _open_source(source)
    try:
        fn = getattr(ds, "audit_files", None)
        audit = fn() if fn is not None else FileAudit()
    finally:
        if owned:
            ds.close()
    if audit.count and not skip_foreign:
        where = getattr(ds, "uri", str(source))
        raise BackupError(audit.message(where) + "; nothing was written (pass "
                          "--skip-foreign to back up the rest: the backup then ends with "
                          "warnings, exit 1)")
    return audit


def _quick_check(tmp_path: Path) -> None:
    report = verify_archive(tmp_path, deep=False, threads=2)
    if not report.ok:
        raise IntegrityError(f"{tmp_path}: the archive just written failed its check: "
                             + "; ".join(report.errors[:3]))


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _safe(ds: Any, name: str) -> int | None:
    fn = getattr(ds, name, None)
    if fn is None:
        return None
    try:
        return fn()
    except Exception:  # estimates only
        return None
