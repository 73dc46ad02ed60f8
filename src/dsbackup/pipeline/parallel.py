"""Parallel scan, parent side: start worker processes, hand out key ranges, balance them by
splitting busy ranges at natural chunk boundaries, and yield the chunks in key order.

Bounded memory: each worker owns two slots of a shared memory file (each a little over
chunk_max_bytes); a worker whose slots are full waits until the parent has written them, so
at most 2 × workers chunks are in flight.
"""

from __future__ import annotations

import bisect
import logging
import mmap
import multiprocessing as mp
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

from dsbackup.errors import BackupError, Cancelled
from dsbackup.pipeline.central import ChunkSettings, ScanStats
from dsbackup.pipeline.chunks import BodyView, ReadyChunk
from dsbackup.pipeline.worker import worker_main

log = logging.getLogger(__name__)

SLOTS_PER_WORKER = 2
SNAPSHOT_RETRIES = 50
SPILLED = -2  # chunk moved from a worker's slot to the spill file


@dataclass
class _Range:
    rid: int
    start: bytes
    end: bytes | None
    worker: int
    pos: bytes = b""
    done: bool = False
    split_pending: bool = False
    split_refused_at: bytes | None = None  # position at which the worker last refused a split
    split_refused_at: bytes | None = None  # position at which the worker last refused a split
    chunks: deque = field(default_factory=deque)


def _shm_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else (
        tempfile.gettempdir())


class ParallelScan:
    """Iterate the chunks of a store scanned by `workers` processes."""

    def __init__(self, kind: str, location: str, settings: ChunkSettings, workers: int,
                 *, cancel: threading.Event | None = None, stats: ScanStats | None = None,
                 consistent: bool = False) -> None:
        self.kind, self.location, self.settings = kind, location, settings
        self.n = max(1, workers)
        self.cancel = cancel
        self.stats = stats if stats is not None else ScanStats()
        self.consistent = consistent
        self.slot_size = settings.chunk_max_bytes + settings.chunk_max_bytes // 64 + 65536
        self.snapshot_id: int | None = None
        self._spill: Any = None

    # -- process management ----------------------------------------------------------------

    def _start(self) -> None:
        ctx = mp.get_context("forkserver")
        fd, base = tempfile.mkstemp(prefix="dsbackup-slots-", dir=_shm_dir())
        os.close(fd)
        os.unlink(base)
        per = SLOTS_PER_WORKER * self.slot_size
        self.conns, self.procs = [], []
        for w in range(self.n):
            path = f"{base}.w{w}"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            self._wpaths.append(path)
            try:
                os.ftruncate(fd, per)
                self._wmaps.append(mmap.mmap(fd, per))
            finally:
                os.close(fd)
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, name=f"dsbackup-worker-{w}", daemon=True,
                            args=(child, path, SLOTS_PER_WORKER, self.slot_size, self.kind,
                                  self.location, self.settings))
            p.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(p)

    def _stop(self) -> None:
        for c in self.conns:
            try:
                c.send(("stop",))
            except OSError:
                pass
        deadline = time.monotonic() + 5
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        for c in self.conns:
            c.close()

    def _unlink_slot_files(self) -> None:
        for p in self._wpaths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        self._wpaths = []

    def _cleanup(self) -> None:
        if self._spill is not None:
            self._spill.close()
        for v in self._wviews:
            try:
                v.release()
            except BufferError:  # a slice still lives in a caller's chunk; GC frees it
                pass
        for m in self._wmaps:
            try:
                m.close()
            except BufferError:
                pass
        for p in self._wpaths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def _recv(self, timeout: float) -> list[tuple[int, tuple]]:
        ready = wait(self.conns + [p.sentinel for p in self.procs], timeout)
        out = []
        for r in ready:
            if r in self.conns:
                w = self.conns.index(r)
                try:
                    out.append((w, r.recv()))
                except EOFError:
                    raise BackupError(f"backup worker {w} exited unexpectedly") from None
            else:
                w = [p.sentinel for p in self.procs].index(r)
                if not self.conns[w].poll():
                    raise BackupError(f"backup worker {w} died (exit code "
                                      f"{self.procs[w].exitcode})")
        for w, msg in out:
            if msg[0] == "error":
                log.debug("worker %d traceback:\n%s", w, msg[2])
                raise BackupError(f"backup worker {w} failed: {msg[1]}")
        return out

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("backup cancelled")

    # -- snapshot ----------------------------------------------------------------------------

    def _await_ready(self) -> None:
        """Wait for every worker's snapshot; for LMDB all must see the same transaction."""
        for attempt in range(SNAPSHOT_RETRIES):
            ids: dict[int, Any] = {}
            while len(ids) < self.n:
                self._check_cancel()
                for w, msg in self._recv(0.2):
                    if msg[0] == "ready":
                        ids[w] = msg[1]
            distinct = set(ids.values())
            if not self.consistent or len(distinct) == 1:
                self.snapshot_id = next(iter(distinct))
                return
            log.info("workers saw different snapshots %s; retrying (%d)", distinct, attempt + 1)
            for c in self.conns:
                c.send(("resnap",))
        raise BackupError(
            f"{self.location}: could not get one consistent snapshot for {self.n} workers "
            f"after {SNAPSHOT_RETRIES} tries (the store is being written too fast); "
            "retry, or use workers=1")

    # -- main loop -----------------------------------------------------------------------

    def __iter__(self) -> Iterator[ReadyChunk]:
        self._wmaps: list[Any] = []
        self._wpaths: list[str] = []
        self._wviews: list[memoryview] = []
        self._start()
        self._wviews = [memoryview(m) for m in self._wmaps]
        try:
            self._await_ready()
            self._unlink_slot_files()  # mapped everywhere now; nothing to leave behind
            yield from self._schedule()
        finally:
            self._stop()
            self._cleanup()

    def _schedule(self) -> Iterator[ReadyChunk]:
        ranges: list[_Range] = []  # sorted by start; ranges[0] is the one being written
        starts: list[bytes] = []
        by_id: dict[int, _Range] = {}
        busy: dict[int, _Range] = {}  # worker -> its range
        idle: set[int] = set(range(self.n))
        unassigned: deque[_Range] = deque()
        rid_counter = [0]

        def add_range(start: bytes, end: bytes | None) -> None:
            r = _Range(rid_counter[0], start, end, -1, pos=start)
            rid_counter[0] += 1
            i = bisect.bisect_left(starts, start)
            ranges.insert(i, r)
            starts.insert(i, start)
            by_id[r.rid] = r
            unassigned.append(r)

        def dispatch() -> None:
            while idle and unassigned:
                r = unassigned.popleft()
                w = min(idle)
                idle.discard(w)
                self._spill_slots(w, ranges)
                r.worker = w
                busy[w] = r
                self.conns[w].send(("range", r.rid, r.start, r.end))
            if not idle:
                return
            asked = sum(1 for r in busy.values() if r.split_pending)
            # a range that refused a split is asked again only after it has moved on
            candidates = [r for r in busy.values()
                          if not r.split_pending and r.split_refused_at != r.pos]
            candidates.sort(key=lambda r: r.start)
            for r in candidates[: max(0, len(idle) - asked)]:
                r.split_pending = True
                self.conns[r.worker].send(("split", r.rid))

        add_range(b"", None)
        dispatch()
        while ranges:
            self._check_cancel()
            head = ranges[0]
            while head.chunks:
                w, slot, meta, inline, catalog = head.chunks.popleft()
                yield self._ready_chunk(w, slot, meta, inline, catalog)
                if slot >= 0:
                    self.conns[w].send(("free", slot))
            if head.done:
                ranges.pop(0)
                starts.pop(0)
                continue
            for w, msg in self._recv(0.1):
                op = msg[0]
                if op == "chunk":
                    r = by_id[msg[1]]
                    r.chunks.append((w, msg[2], msg[3], msg[4], msg[5]))
                    r.pos = msg[3][2]
                    if idle:
                        dispatch()
                    if idle:
                        dispatch()
                elif op == "done":
                    r = by_id[msg[1]]
                    r.done = True
                    r.split_pending = False
                    busy.pop(w, None)
                    idle.add(w)
                    dispatch()
                elif op == "split":
                    r = by_id[msg[1]]
                    r.split_pending = False
                    key = msg[2]
                    if key is not None:
                        # the worker has cut its range at `key`: the rest becomes a new range
                        old_end, r.end = r.end, key
                        add_range(key, old_end)
                    else:
                        r.split_refused_at = r.pos
                    dispatch()
        self._collect_stats()

    def _collect_stats(self) -> None:
        """Stop the workers and add up what their chunkers excluded."""
        for c in self.conns:
            c.send(("stop",))
        pending = set(range(self.n))
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for r in wait([self.conns[w] for w in pending], 0.2):
                w = self.conns.index(r)
                try:
                    msg = r.recv()
                except EOFError:
                    raise BackupError(f"backup worker {w} exited before reporting") from None
                if msg[0] == "error":
                    raise BackupError(f"backup worker {w} failed: {msg[1]}")
                if msg[0] == "stats":
                    self.stats.excluded_records += msg[1]
                    self.stats.excluded_bytes += msg[2]
                    pending.discard(w)
        if pending:
            raise BackupError(f"backup workers {sorted(pending)} did not finish")

    def _spill_slots(self, w: int, ranges: list[_Range]) -> None:
        """Move worker w's unwritten chunks out of its slots into the spill file.

        A worker that takes a new range may still hold chunks of a finished range that waits
        behind the range being written; if those kept its slots, it could not send the chunks
        of an earlier range, and the pipeline would stall. Spilling keeps memory bounded (the
        spill file is on disk) and costs a copy of at most SLOTS_PER_WORKER chunks.
        """
        for r in ranges:
            for j, (cw, slot, meta, _inline, catalog) in enumerate(r.chunks):
                if cw != w or slot < 0:
                    continue
                if self._spill is None:
                    self._spill = tempfile.TemporaryFile(prefix="dsbackup-spill-")  # noqa: SIM115
                blen = meta[-1]
                off = slot * self.slot_size
                pos = self._spill.seek(0, os.SEEK_END)
                self._spill.write(self._wviews[w][off : off + blen])
                self._spill.flush()
                r.chunks[j] = (w, SPILLED, meta, (pos, blen), catalog)
                self.conns[w].send(("free", slot))

    def _ready_chunk(self, w: int, slot: int, meta: tuple, inline: Any,
                     catalog: tuple | None) -> ReadyChunk:
        (records, first, last, kxxh, pxxh, raw, crc, size, input_len, blen) = meta
        if slot >= 0:
            off = slot * self.slot_size
            data: Any = self._wviews[w][off : off + blen]
        elif slot == SPILLED:
            pos, n = inline
            data = os.pread(self._spill.fileno(), n, pos)
        else:
            data = inline
        body = BodyView(data, crc, size, input_len)
        cbody = cxxh = None
        if catalog is not None:
            cdata, ccrc, csize, clen, cxxh = catalog
            cbody = BodyView(cdata, ccrc, csize, clen)
        self.stats.records += records
        self.stats.raw_bytes += raw
        return ReadyChunk(records, first, last, kxxh, pxxh, raw, body, cbody, cxxh)
