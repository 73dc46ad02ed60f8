"""Central scan: one reader thread frames chunks from any datastore; a thread pool compresses
them (native, GIL released); results come back in key order with bounded memory.

Used for stores that one process must read alone (LevelDB), in-memory stores, and any user
object implementing the Datastore protocol.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dsbackup._ext.framing import Chunker, FramingError
from dsbackup.errors import BackupError, Cancelled
from dsbackup.patterns import KeyMatcher, key_matcher
from dsbackup.pipeline.chunks import ReadyChunk, compress_chunk

_END = object()


@dataclass
class ScanStats:
    excluded_records: int = 0
    excluded_bytes: int = 0
    worker_cpu_s: float = 0.0  # CPU time of worker processes (parallel scan)
    worker_peak_rss: int = 0  # largest peak resident set of one worker process
    spilled_chunks: int = 0  # chunks moved from a worker's slots to the spill file
    unreadable_files: int = 0  # listed by the scan, then vanished or failed to read
    unreadable_examples: list[str] = field(default_factory=list)
    # listings of a flatfs store's shard directories (datastore.listing_passes) by the
    # parallel scan's planner and, together, by its scan workers
    plan_listing_passes: int = 0
    worker_listing_passes: int = 0

    def add_unreadable(self, count: int, examples: list[str]) -> None:
        self.unreadable_files += count
        self.unreadable_examples += examples[:max(0, 5 - len(self.unreadable_examples))]


@dataclass(frozen=True)
class ChunkSettings:
    chunk_size: int
    chunk_max_bytes: int
    level: int
    exclude: tuple[str, ...] = ()
    catalog: bool = False
    target_chunk_bytes: int = 1 << 20  # mean payload a chunk aims at (for planning only)

    def matcher(self) -> KeyMatcher | None:
        return key_matcher(self.exclude, "exclude_patterns")


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def central_chunks(
    ds: Any,
    settings: ChunkSettings,
    *,
    threads: int,
    stats: ScanStats,
    cancel: threading.Event | None = None,
    scan_batch_bytes: int = 8 << 20,
) -> Iterator[ReadyChunk]:
    """Yield compressed chunks of the whole store in key order."""
    threads = max(1, threads)
    stop = threading.Event()
    results: queue.Queue = queue.Queue(maxsize=2 * threads)
    chunker = Chunker(settings.chunk_size, settings.chunk_max_bytes,
                      exclude=settings.matcher(), catalog=settings.catalog)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dsbackup-compress")

    def submit(c: Any) -> Future:
        return pool.submit(compress_chunk, c, settings.level, settings.catalog)

    def reader() -> None:
        try:
            for keys, values in ds.scan_batches(b"", None, max_bytes=scan_batch_bytes):
                if stop.is_set() or (cancel is not None and cancel.is_set()):
                    return
                for c in chunker.add(keys, values):
                    if not _put(results, submit(c), stop):
                        return
            last = chunker.finish()
            if last is not None and not _put(results, submit(last), stop):
                return
            _put(results, _END, stop)
        except BaseException as exc:  # handed to the consumer, which re-raises
            _put(results, exc, stop)

    # a flatfs store's listing (one pass over every shard directory before the first key of
    # a large store) stops between directories when the scan is stopped or cancelled
    set_stop = getattr(ds, "set_listing_stop", None)
    if set_stop is not None:
        set_stop(lambda: stop.is_set() or (cancel is not None and cancel.is_set()))
    t = threading.Thread(target=reader, name="dsbackup-scan", daemon=True)
    t.start()
    try:
        while True:
            try:
                item = results.get(timeout=0.1)
            except queue.Empty:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("backup cancelled") from None
                continue
            if item is _END:
                break
            if isinstance(item, FramingError):
                raise BackupError(f"{getattr(ds, 'uri', ds)}: {item}") from item
            if isinstance(item, BaseException):
                raise item
            yield item.result()
    finally:
        stop.set()
        t.join()
        if set_stop is not None:
            set_stop(None)
        pool.shutdown(wait=True, cancel_futures=True)
        stats.excluded_records = chunker.excluded_records
        stats.excluded_bytes = chunker.excluded_bytes
        skipped = getattr(ds, "skipped", None)
        if skipped is not None:
            stats.add_unreadable(skipped.count, skipped.examples)
