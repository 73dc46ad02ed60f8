"""``verify``, ``inspect`` and ``ls`` of Go-tool archives (docs/GOFORMAT.md).

All three read the archive with dsbackup.compat.goformat, which checks what the Go restore would
accept and more: ``verify`` parses every chunk member (JSON, every base64 value decoded)
and matches the members and records against ``metadata.json``; damage is an
IntegrityError naming the member. ``inspect`` reads the member headers and the metadata
(no chunk is parsed); ``ls`` lists the keys as a restore would write them (each key once,
the last value wins, bytewise order) with their value sizes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from dsbackup.archive.verify import VerifyReport
from dsbackup.compat.goformat import _walk, iter_go_records, read_go_metadata
from dsbackup.errors import ArchiveError, IntegrityError
from dsbackup.metadata import BackupMetadata, BackupStatistics, parse_timestamp

__all__ = ["verify_go", "inspect_go", "list_go", "GO_TOOL"]

GO_TOOL = "Go pkg/backup (gosuda/boxo-starter-kit)"


def verify_go(path: str | os.PathLike[str]) -> VerifyReport:
    """Deep check: every member read, every chunk parsed, totals against metadata.json."""
    t0 = time.perf_counter()
    report = VerifyReport(path=os.fspath(path), mode="deep")
    counts: dict[str, int] = {}
    try:
        for _ in iter_go_records(path, counts_out=counts, batch_records=1 << 16):
            pass
    except (IntegrityError, ArchiveError) as exc:
        report.add(exc)
    report.chunks = report.checked_chunks = report.deep_checked_chunks = \
        counts.get("members", 0)
    report.records = counts.get("records", 0)
    report.bytes_checked = counts.get("value_bytes", 0)
    report.duration_s = time.perf_counter() - t0
    return report


def inspect_go(path: str | os.PathLike[str]) -> BackupMetadata:
    """Metadata of a Go archive: metadata.json and the member count (chunks not parsed)."""
    p = os.fspath(path)
    members = 0
    for kind, _name, _data in _walk(p, max_member_bytes=1 << 62, read_chunks=False):
        if kind == "chunk":
            members += 1
    meta = read_go_metadata(p)
    config: dict[str, Any] = meta.get("config") or {}
    stats: dict[str, Any] = meta.get("statistics") or {}
    try:
        ts = parse_timestamp(_trim_nanos(str(meta.get("timestamp", ""))))
    except ValueError:
        ts = datetime.fromtimestamp(0, timezone.utc)
    level = _level(meta.get("compression"))
    return BackupMetadata(
        path=p, version=0, timestamp=ts, total_keys=int(meta.get("total_keys") or 0),
        total_size=int(meta.get("total_size") or 0), compressed_size=os.path.getsize(p),
        chunks=members, fingerprint=str(meta.get("checksum") or ""),
        compression={"level": level, "engine": "gzip"},
        config={"chunk_size": config.get("ChunkSize"), "chunk_max_bytes": None,
                "go": config},
        datastore={"uri": (meta.get("datastore_info") or {}).get("type"), "backend": "go"},
        statistics=BackupStatistics(
            duration_s=(stats.get("duration") or 0) / 1e9,
            keys_processed=int(stats.get("keys_processed") or 0),
            bytes_processed=int(stats.get("bytes_processed") or 0),
            bytes_compressed=os.path.getsize(p),
            errors=int(stats.get("error_count") or 0),
            skipped_keys=int(stats.get("skipped_keys") or 0), mode="go"),
        parent=None, tool=GO_TOOL + (f", version {meta.get('version')}"
                                     if meta.get("version") else ""))


def list_go(path: str | os.PathLike[str], start: bytes, end: bytes | None
            ) -> Iterator[tuple[bytes, int, None]]:
    """``(key, value size, None)`` in bytewise order for ``start <= key < end``."""
    for keys, values in iter_go_records(path):
        for k, v in zip(keys, values):
            if k >= start and (end is None or k < end):
                yield k, len(v), None


def _trim_nanos(ts: str) -> str:
    """RFC 3339 with nanoseconds -> at most microseconds (what fromisoformat takes)."""
    head, dot, rest = ts.partition(".")
    if not dot:
        return ts
    digits = len(rest) - len(rest.lstrip("0123456789"))
    return f"{head}.{rest[:min(digits, 6)]}{rest[digits:]}"


def _level(compression: Any) -> int | None:
    if isinstance(compression, str) and compression.startswith("gzip-"):
        try:
            return int(compression[5:])
        except ValueError:
            return None
    return None
