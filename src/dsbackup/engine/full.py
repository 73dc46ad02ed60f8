"""A full backup: the store-everything policy. Every chunk of the store is compressed and
stored, scanned centrally (one reader, a thread pool compressing) or by worker processes
(dsbackup.pipeline: central.py, parallel.py); the write loop is dsbackup.engine.write's."""

from __future__ import annotations

import resource
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dsbackup.archive.pages import choose_page_entries, expected_chunks
from dsbackup.engine.config import BackupConfig
from dsbackup.engine.manifest import ScanOutcome
from dsbackup.engine.nodefiles import node_snapshot
from dsbackup.engine.plan import BackupPlan, ProgressCallback
from dsbackup.pipeline.central import ChunkSettings, ScanStats, central_chunks
from dsbackup.pipeline.parallel import ParallelScan

# LMDB's reader table has 126 slots shared by every process reading the store (a node, other
# backups); a scan process past them failed with MDB_READERS_FULL
LMDB_MAX_SCAN_WORKERS = 64


class FullStream:
    """Every chunk of `ds`, compressed, in key order (see dsbackup.engine.write)."""

    max_pending = 0  # the scans hand over finished chunks

    def __init__(self, ds: Any, settings: ChunkSettings, workers: int, parallel: bool,
                 cancel: threading.Event) -> None:
        """`parallel`: scan with `workers` processes, which open the store themselves: an
        LMDB environment at its ``location``, any other backend by its ``open_uri`` (flatfs:
        the uri with its listing settings) or ``uri``."""
        self.ds, self.settings, self.cancel = ds, settings, cancel
        self.parallel = parallel
        self.workers = workers
        self.stats = ScanStats()
        self._chunks: Any = None
        self._iter: Any = None
        self._cpu0 = 0.0

    def __enter__(self) -> FullStream:
        ds, s = self.ds, self.settings
        if self.parallel:
            kind = "lmdb" if ds.scheme == "lmdb" else "datastore"
            loc = ds.location if kind == "lmdb" else getattr(ds, "open_uri", ds.uri)
            # SQLite: the processes' snapshots are one state when no commit came while
            # they were begun (ParallelScan retries until then)
            self._chunks = ParallelScan(kind, loc, s, self.workers, cancel=self.cancel,
                                        stats=self.stats, consistent=(kind == "lmdb"),
                                        data_version=getattr(ds, "data_version", None))
        else:
            self._chunks = central_chunks(ds, s, threads=self.workers, stats=self.stats,
                                          cancel=self.cancel)
        self._cpu0 = cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        close = getattr(self._iter, "close", None)
        if close is not None:
            close()  # an unfinished scan stops its thread or its workers now

    def items(self) -> Iterator[Any]:
        self._iter = iter(self._chunks)
        return self._iter

    def outcome(self) -> ScanOutcome:
        stats = self.stats
        return ScanOutcome(
            mode="parallel" if self.parallel else "central",
            # (fewer than asked where /dev/shm and TMPDIR had no room for their slots)
            workers=getattr(self._chunks, "n", self.workers) if self.parallel else 1,
            excluded_records=stats.excluded_records, excluded_bytes=stats.excluded_bytes,
            snapshot=getattr(self._chunks, "snapshot_id", None),
            extra={
                "cpu_s": round(cpu_seconds() - self._cpu0 + stats.worker_cpu_s, 6),
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "worker_peak_rss_bytes": stats.worker_peak_rss,
                "spilled_chunks": stats.spilled_chunks,
            },
            unreadable_files=stats.unreadable_files,
            unreadable_examples=list(stats.unreadable_examples))


def plan_full(ds: Any, path: Path, cfg: BackupConfig, *, parallel_min_bytes: int,
              parallel_schemes: set[str], progress: ProgressCallback | None,
              cancel: threading.Event, t0: float, check: Any) -> tuple[BackupPlan, FullStream]:
    """The plan and the chunk stream of a full backup of the opened datastore `ds`."""
    approx_count = _safe(ds, "approx_count")
    approx_size = _safe(ds, "approx_size")
    basis_count, basis_size = approx_count, approx_size
    if approx_count is None and cfg.chunk_size is None:
        # a mount that cannot count (kubo:'s LevelDB): size by the mounts that can
        basis = _safe(ds, "chunk_basis")
        if basis is not None:
            basis_count, basis_size = basis
    chunk_size = cfg.resolve_chunk_size(basis_count, basis_size)
    mean_record = (basis_size / basis_count) if basis_count and basis_size else 256.0
    settings = ChunkSettings(chunk_size, cfg.chunk_max_bytes, cfg.chunk_level,
                             tuple(cfg.exclude_patterns), cfg.include_metadata,
                             target_chunk_bytes=max(4096, int(chunk_size * mean_record)))
    scheme = getattr(ds, "scheme", "") or ""
    workers = cfg.effective_workers
    if scheme == "lmdb":  # each scan process takes a slot of the store's reader table (126)
        workers = min(workers, LMDB_MAX_SCAN_WORKERS)
    # starting worker processes costs more than a small store takes to scan centrally
    parallel = (workers > 1 and scheme in parallel_schemes
                and bool(getattr(ds, "parallel_readable", False))
                and bool(getattr(ds, "location" if scheme == "lmdb" else "uri", ""))
                and (approx_size is None or approx_size >= parallel_min_bytes))
    plan = BackupPlan(
        path=path, cfg=cfg, created=datetime.now(timezone.utc),
        source={"uri": getattr(ds, "uri", type(ds).__name__),
                "backend": scheme or type(ds).__name__, "approx_records": approx_count,
                "approx_bytes": approx_size},
        chunk_size=chunk_size, chunk_max_bytes=cfg.chunk_max_bytes,
        node=None if cfg.datastore_only else node_snapshot(ds),  # kubo: the node's files
        cancel=cancel, t0=t0, progress=progress, totals=(approx_count, approx_size),
        page_entries=choose_page_entries(cfg.paged_index, expected_chunks(
            basis_count, approx_size, chunk_size, cfg.chunk_max_bytes)),
        check=check if cfg.verify_integrity else None)
    return plan, FullStream(ds, settings, workers, parallel, cancel)


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _safe(ds: Any, name: str) -> Any:
    fn = getattr(ds, name, None)
    if fn is None:
        return None
    try:
        return fn()
    except Exception:  # estimates only
        return None
