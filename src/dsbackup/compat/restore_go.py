"""Restore of archives written by the Go tool dsbackup re-imagines (see docs/GOFORMAT.md)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from dsbackup.compat.goformat import iter_go_records
from dsbackup.errors import Cancelled, TargetNotEmpty
from dsbackup.keys import children_range
from dsbackup.metadata import Progress, RestoreResult
from dsbackup.patterns import key_matcher


def restore_go_archive(path: str | os.PathLike[str], target: Any, *, mode: str = "empty",
                       prefix: str | bytes | None = None, pattern: str | list[str] | None = None,
                       batch_bytes: int = 64 << 20,
                       progress: Callable[[Progress], None] | None = None,
                       cancel: threading.Event | None = None) -> RestoreResult:
    """`cancel` (set) raises Cancelled: while the archive is read, nothing has been written;
    later, between batches. `progress` is called after each batch written."""
    t0 = time.perf_counter()
    owned = False
    if isinstance(target, (str, os.PathLike)):
        from dsbackup.datastores import open_datastore

        target = open_datastore(str(target), readonly=False)
        owned = True
    try:
        result = RestoreResult(archive=str(path), target=getattr(target, "uri", str(target)))
        if mode == "empty" and not target.is_empty():
            raise TargetNotEmpty(f"{result.target}: target datastore is not empty; restore "
                                 "into an empty store, or choose mode overwrite or "
                                 "skip_existing", target=result.target)
        start, end = children_range(prefix)
        patterns = [pattern] if isinstance(pattern, str) else list(pattern or [])
        matcher = key_matcher(patterns, "pattern")
        counts: dict[str, int] = {}
        for keys, values in iter_go_records(path, counts_out=counts, cancel=cancel):
            if cancel is not None and cancel.is_set():
                raise Cancelled("restore cancelled")
            pairs = [(k, v) for k, v in zip(keys, values)
                     if k >= start and (end is None or k < end)
                     and (matcher is None or matcher.match(k))]
            if mode == "skip_existing":
                kept = [(k, v) for k, v in pairs if not target.has(k)]
                result.records_skipped += len(pairs) - len(kept)
                pairs = kept
            if pairs:
                target.put_many([k for k, _ in pairs], [v for _, v in pairs])
                result.records_written += len(pairs)
                result.bytes_written += sum(len(k) + len(v) for k, v in pairs)
            if progress is not None:
                progress(Progress(result.records_written, result.bytes_written,
                                  counts.get("members", 0), time.perf_counter() - t0,
                                  counts.get("records"), counts.get("value_bytes")))
        target.sync("/")
        result.chunks = result.chunks_total = counts.get("members", 0)
        result.duration_s = time.perf_counter() - t0
        return result
    finally:
        if owned:
            target.close()
