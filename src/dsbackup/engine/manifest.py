"""The one place a backup's manifest, summary and metadata are built (docs/FORMAT.md §6, §7),
for full and incremental backups alike (and the metadata of a Go-format backup), and read
back (`metadata_from_reader`, for inspect)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsbackup._version import __version__
from dsbackup.archive.writer import WrittenArchive
from dsbackup.engine.config import BackupConfig
from dsbackup.engine.nodefiles import holds_private_key, private_key_warning
from dsbackup.engine.plan import BackupPlan
from dsbackup.errors import IntegrityError
from dsbackup.metadata import BackupMetadata, BackupStatistics, parse_timestamp

if TYPE_CHECKING:  # a backup does not read archives (start-up, docs/PERFORMANCE.md)
    from dsbackup.archive.reader import ArchiveReader

TOOL = f"dsbackup {__version__}"


@dataclass
class ScanOutcome:
    """What a chunk stream reports once it is exhausted: the summary's scan fields and what
    the statistics need. ``extra``: the fields only this kind of backup writes."""

    mode: str
    workers: int
    excluded_records: int
    excluded_bytes: int
    snapshot: int | None
    extra: dict[str, Any] = field(default_factory=dict)
    unreadable_files: int = 0
    unreadable_examples: list[str] = field(default_factory=list)
    foreign: Any = None  # a FileAudit of the files the scan itself audited (flatfs listing)


def manifest_for(plan: BackupPlan) -> dict[str, Any]:
    """The manifest (§6). An incremental records the parent and ``trust_content_keys``."""
    cfg = plan.cfg
    settings: dict[str, Any] = {
        "compression_level": cfg.compression_level,
        "engine": cfg.engine,
        "chunk_size": plan.chunk_size,
        "chunk_max_bytes": plan.chunk_max_bytes,
        "exclude_patterns": list(cfg.exclude_patterns),
        "include_metadata": plan.catalog,
    }
    if cfg.codec != "gzip":  # (absent for gzip: such manifests stay as they were)
        settings["codec"] = cfg.codec
    if plan.parent is not None:
        settings["trust_content_keys"] = cfg.trust_content_keys
    manifest: dict[str, Any] = {
        "format": "dsbackup",
        "version": 1,
        "tool": TOOL,
        "created": plan.created.isoformat(),
        "source": plan.source,
        "settings": settings,
        "parent": None if plan.parent is None else plan.parent.to_manifest(),
    }
    # the node's files are stored whole in every archive of a chain (docs/FORMAT.md §11.2)
    if plan.node is not None:
        manifest["node"] = plan.node.manifest
    return manifest


def summary_for(plan: BackupPlan, outcome: ScanOutcome) -> dict[str, Any]:
    """The summary's fields the engine writes (the writer adds the counts, §7)."""
    return {
        "duration_s": round(time.perf_counter() - plan.t0, 6),
        "excluded_records": outcome.excluded_records,
        "excluded_bytes": outcome.excluded_bytes,
        "mode": outcome.mode,
        "workers": outcome.workers,
        "snapshot": outcome.snapshot,
        **outcome.extra,
    }


def metadata_for(plan: BackupPlan, manifest: dict[str, Any], version: int,
                 written: WrittenArchive, outcome: ScanOutcome) -> BackupMetadata:
    """What create_backup returns for the archive just written."""
    cfg = plan.cfg
    stats = BackupStatistics(
        duration_s=time.perf_counter() - plan.t0, keys_processed=written.records,
        bytes_processed=written.raw_bytes, bytes_compressed=written.size, errors=0,
        skipped_keys=outcome.excluded_records, skipped_bytes=outcome.excluded_bytes,
        workers=outcome.workers, mode=outcome.mode, cpu_s=outcome.extra.get("cpu_s", 0.0),
        unreadable_files=outcome.unreadable_files,
        skipped_files=list(outcome.unreadable_examples))
    if outcome.foreign is not None:
        stats.foreign_files = outcome.foreign.count
        stats.temp_files = outcome.foreign.temp_files
        stats.skipped_files = [*outcome.foreign.examples, *stats.skipped_files][:10]
    node = plan.node
    return BackupMetadata(
        path=str(plan.path), version=version, timestamp=plan.created,
        total_keys=written.records, total_size=written.raw_bytes,
        compressed_size=written.size, chunks=written.chunks, fingerprint=written.fingerprint,
        compression={"level": cfg.compression_level, "engine": cfg.engine, "codec": cfg.codec},
        config={**cfg.to_dict(), "chunk_size": plan.chunk_size,
                "chunk_max_bytes": plan.chunk_max_bytes},
        datastore=manifest["source"], statistics=stats, parent=plan.parent_fingerprint,
        tool=manifest["tool"], node=manifest.get("node"),
        node_warning=None if cfg.encryption is not None else  # sealed: not readable
        private_key_warning(manifest.get("node"), node and node.files))


def go_metadata(ds: Any, path: Path, cfg: BackupConfig, r: Any, created: datetime,
                chunk_size: int, t0: float) -> BackupMetadata:
    """What create_backup returns for an archive in the Go tool's format (`r`: what
    dsbackup.compat.gowriter.write_go_archive reports)."""
    skipped = getattr(ds, "skipped", None)
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
        datastore={"uri": getattr(ds, "uri", type(ds).__name__),
                   "backend": getattr(ds, "scheme", "") or ""},
        statistics=stats, parent=None, tool=f"{TOOL} (Go format)")


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
                     "engine": settings.get("engine"), "codec": r.codec},
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
