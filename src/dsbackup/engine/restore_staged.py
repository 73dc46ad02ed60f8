"""The restore loop of a target that stages files (flatfs, a Kubo repo's ``/blocks``): each
inflate thread checks its chunk, then writes the chunk's records into temp files itself
(``stage_many``), so file creation, the copy into the page cache and inflate all run on every
core; a commit thread puts each batch's files in place durably (``commit_staged``: fsync,
rename, directory fsyncs), records it in the journal, and meanwhile the threads stage the
next batch.

Guarantees, as the datastore path's: no record of a chunk is written before its checksums
pass (a temp file is not a record: it has no record's name); a record's name never holds a
partial value; the journal names a chunk as done only once every record up to it is renamed
in and fsynced with its directory; when the restore returns, every record is on disk. A
restore that stops removes the temp files it staged and did not commit (a SIGKILL leaves them
in ``.temp/``, which the next writable open empties, as go-ds-flatfs's does).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from dsbackup.archive.reader import ArchiveReader
from dsbackup.background import BackgroundCall
from dsbackup.engine.restore_journal import write_journal
from dsbackup.engine.restore_records import chunk_records
from dsbackup.metadata import Progress, RestoreResult
from dsbackup.patterns import KeyMatcher
from dsbackup.poolmap import ordered_map

# payload bytes per committed batch: the last batch's commit (its fsyncs) is what the restore
# waits for at its end, and a batch's directories are fsynced once per batch
STAGED_BATCH_BYTES = 32 << 20
# the journal (and the target's sync: flatfs's diskUsage.cache) at most this often
JOURNAL_INTERVAL_S = 1.0


def write_staged(reader: ArchiveReader, target: Any, selected: range, *, workers: int,
                 cancel: threading.Event, progress: Callable[[Progress], None] | None,
                 batch_bytes: int, jpath: Path | None, state: dict[str, Any],
                 result: RestoreResult, t0: float, start: bytes, end: bytes | None,
                 matcher: KeyMatcher | None,
                 no_space: Callable[[Any, int | None], Any], writes: Any) -> None:
    """Restore the chunks `selected` into `target` (its stage_many / commit_staged /
    discard_staged); `no_space(target, needed)` is the context that turns a full disk into
    the restore's error. `writes` (restore.py's _Writes) learns what this run did: whether
    a commit began (records may be in the target), the records and bytes committed, and
    the records of the chunks gone through."""
    from concurrent.futures import ThreadPoolExecutor

    total_bytes = reader.summary.get("raw_bytes")

    def work(i: int) -> tuple[int, Any, int, int]:
        keys, values = chunk_records(reader, i, start, end, matcher)
        nbytes = sum(map(len, keys)) + sum(map(len, values))
        if not keys:
            return i, None, 0, 0
        with no_space(target, nbytes):
            staged = target.stage_many(keys, values)
        return i, staged, len(keys), nbytes

    committer = _Committer(target, jpath, state, result, no_space, writes)
    batch: list[Any] = []
    acc_bytes = acc_records = 0
    acc_payload = 0
    sent_records = sent_bytes = 0  # handed to the committer (progress counts them)
    last_chunk = selected.start - 1
    threads = max(1, workers)
    try:
        with ThreadPoolExecutor(max_workers=threads,
                                thread_name_prefix="dsbackup-inflate") as pool, \
                closing(ordered_map(pool, work, selected, 2 * threads, cancel=cancel,
                                    cancelled="restore cancelled")) as chunks:
            for i, staged, n, nbytes in chunks:
                if staged is not None:
                    batch.append(staged)
                acc_records += n
                acc_bytes += nbytes
                e = reader.entry(i)
                acc_payload += e.payload_len
                writes.expected += e.records
                last_chunk = i
                result.chunks += 1
                if acc_payload >= batch_bytes:
                    committer.submit(batch, acc_records, acc_bytes, last_chunk + 1)
                    sent_records += acc_records
                    sent_bytes += acc_bytes
                    batch, acc_records, acc_bytes, acc_payload = [], 0, 0, 0
                if progress is not None:
                    progress(Progress(sent_records + acc_records,
                                      sent_bytes + acc_bytes, result.chunks,
                                      time.perf_counter() - t0,
                                      reader.summary.get("records"), total_bytes))
        if selected:
            last_chunk = max(last_chunk, selected[-1])
        # the last batch: _finish syncs the target and removes the journal
        committer.submit(batch, acc_records, acc_bytes, last_chunk + 1, final=True)
        batch = []
        committer.wait()
    except BaseException:
        # the pool has ended (its `with`): nothing stages any more; a commit in flight ends
        # first, then every temp file not renamed in goes
        try:
            committer.wait()
        except Exception:  # noqa: BLE001 - the first error is the one raised
            pass
        target.discard_staged()
        raise


class _Committer:
    """Commits batches in a thread, one at a time, in order: ``commit_staged``, then (at most
    every JOURNAL_INTERVAL_S) the target's sync and the journal. ``submit`` waits for the
    commit before it; ``wait`` joins the last and raises its error."""

    def __init__(self, target: Any, jpath: Path | None, state: dict[str, Any],
                 result: RestoreResult, no_space: Callable[[Any, int | None], Any],
                 writes: Any) -> None:
        self._target = target
        self._writes = writes
        self._jpath = jpath
        self._state = state
        self._result = result
        self._no_space = no_space
        self._call = BackgroundCall("dsbackup-restore-commit")
        self._journaled = time.monotonic()

    def submit(self, batch: list[Any], records: int, nbytes: int, next_chunk: int, *,
               final: bool = False) -> None:
        self._call.start(self._run, batch, records, nbytes, next_chunk, final)

    def _run(self, batch: list[Any], records: int, nbytes: int, next_chunk: int,
             final: bool) -> None:
        if batch:
            self._writes.started = True  # a failed commit may have renamed some in
            with self._no_space(self._target, nbytes):
                self._target.commit_staged(batch)
        self._result.records_written += records
        self._result.bytes_written += nbytes
        self._writes.records += records
        self._writes.nbytes += nbytes
        if self._jpath is not None and not final \
                and time.monotonic() - self._journaled >= JOURNAL_INTERVAL_S:
            with self._no_space(self._target, None):
                self._target.sync("/")
            self._state["next_chunk"] = next_chunk
            write_journal(self._jpath, self._state)
            self._journaled = time.monotonic()

    def wait(self) -> None:
        self._call.wait()
