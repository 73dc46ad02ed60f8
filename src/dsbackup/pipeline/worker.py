"""Worker processes of the parallel backup.

A scan worker turns the key ranges (stripes) the parent assigns into finished chunks and hands
them back through slots of a shared memory file: LMDB workers compress each body straight into
a free slot, others copy it there; the parent writes them to the archive straight from the
mapping. The planner walks the keys once and
streams the stripe boundaries; for a store read by key list (flatfs: a key range is no subset
of its shard directories, so a range scan would list the whole store) it streams each
stripe's keys too, and the worker given them reads exactly those files. All of them read the
same snapshot.

Messages, worker -> parent:
  ("ready", snapshot_id)
  ("chunk", range_id, slot, meta, inline_body, catalog)   slot -1: body is inline (too large)
  ("done", range_id)
  ("stripes", [key, ...]) and ("plan_done",)             from the planner; keyed stores:
  ("stripes", [key, ...], [keys | None, ...]) and ("plan_done", keys | None)
        each stripe's keys (None: too many, the worker scans the range); the parent stops
        reading them while enough stripes wait, so the planner waits in send
  ("stats", excluded_records, excluded_bytes, cpu_seconds, peak_rss_bytes,
   unreadable_files, [first unreadable paths], listing_passes)    before exiting
  ("error", message, traceback)
Parent -> worker:
  ("range", range_id, start, end, [freed slot, ...], keys | None) | ("free", [slot, ...])
  | ("plan", min_records, min_bytes) | ("resnap",) | ("stop",)
"""

from __future__ import annotations

import mmap
import os
import resource
import traceback
from collections import deque
from typing import Any

from dsbackup._ext.checksum import xxh3_64
from dsbackup._ext.compress import deflate_body
from dsbackup.allocator import tune_allocator
from dsbackup.codec import deflate_level
from dsbackup.pipeline.central import ChunkSettings
from dsbackup.pipeline.sources import open_source

STRIPES_PER_MESSAGE = 256
KEYS_PER_MESSAGE = 8192  # a keyed planner's message holds up to this many keys (or one stripe)
MAX_STRIPE_KEYS = 1 << 18  # a stripe with more keys is sent without them (huge chunk sizes)


def chunk_meta(c: Any) -> tuple:
    b = c.body
    return (c.record_count, bytes(c.first_key), bytes(c.last_key), c.keys_xxh3,
            c.payload_xxh3, c.raw_bytes, b.crc32, b.size, b.input_len, b.content_len, b.xxh3,
            b.codec, len(b.data))


class _Worker:
    def __init__(self, conn: Any, shm_path: str | None, nslots: int, slot_size: int,
                 kind: str, location: str, settings: ChunkSettings) -> None:
        self.conn = conn
        self.slots: list[memoryview] = []
        if shm_path is not None:
            fd = os.open(shm_path, os.O_RDWR)
            try:
                mm = mmap.mmap(fd, nslots * slot_size)
            finally:
                os.close(fd)
            whole = memoryview(mm)
            self.slots = [whole[i * slot_size:(i + 1) * slot_size] for i in range(nslots)]
        self.slot_size = slot_size
        self.free = deque(range(nslots))
        self.inbox: deque = deque()
        self.settings = settings
        self.source = open_source(kind, location, settings)
        self.rid: int | None = None

    def _handle(self, msg: tuple) -> None:
        if msg[0] == "free":
            self.free.extend(msg[1])
            return
        if msg[0] == "range":
            self.free.extend(msg[4])
        self.inbox.append(msg)

    def _next_message(self) -> tuple:
        while not self.inbox:
            self._handle(self.conn.recv())
        return self.inbox.popleft()

    def _take_slot(self) -> int | None:
        if not self.slots:
            return None
        while not self.free:
            self._handle(self.conn.recv())
        return self.free.popleft()

    def _send_chunk(self, c: Any, slot: int | None) -> None:
        catalog = None
        if self.settings.catalog:
            cat = c.catalog
            cb = deflate_body(cat, deflate_level(self.settings.level))
            catalog = (cb.data, cb.crc32, cb.size, cb.input_len, xxh3_64(cat))
        data = c.body.data
        if slot is not None and isinstance(data, memoryview):
            pass  # compressed straight into the slot (LmdbSource)
        elif slot is not None and len(data) <= self.slot_size:
            self.slots[slot][: len(data)] = data
        else:
            if slot is not None:
                self.free.appendleft(slot)
            self.conn.send(("chunk", self.rid, -1, chunk_meta(c), bytes(data), catalog))
            return
        self.conn.send(("chunk", self.rid, slot, chunk_meta(c), None, catalog))

    def _run_range(self, rid: int, start: bytes, end: bytes | None,
                   keys: list[bytes] | None = None) -> None:
        self.rid = rid
        self.source.begin(start, end, keys)
        while True:
            slot = self._take_slot()  # the next chunk's body is compressed into it
            c = self.source.next_chunk(None if slot is None else self.slots[slot])
            if c is None:
                if slot is not None:
                    self.free.appendleft(slot)
                break
            self._send_chunk(c, slot)
        self.rid = None
        self.conn.send(("done", rid))

    def _plan(self, min_records: int, min_bytes: int) -> None:
        batch: list[bytes] = []
        want = 1  # the first boundaries go out at once so scanning starts without delay
        for key in self.source.stripes(min_records, min_bytes):
            batch.append(key)
            if len(batch) >= want:
                self.conn.send(("stripes", batch))
                batch = []
                want = min(STRIPES_PER_MESSAGE, want * 2)
        if batch:
            self.conn.send(("stripes", batch))
        self.conn.send(("plan_done",))

    def _plan_keyed(self, min_records: int) -> None:
        """Stripes with their keys, a few stripes (KEYS_PER_MESSAGE keys) a message."""
        ends: list[bytes] = []
        lists: list[list[bytes] | None] = []
        held = 0
        want = 1  # the first stripes go out at once so scanning starts without delay
        for end, keys in self.source.keyed_stripes(min_records, MAX_STRIPE_KEYS):
            if end is None:
                if ends:
                    self.conn.send(("stripes", ends, lists))
                self.conn.send(("plan_done", keys))
                return
            ends.append(end)
            lists.append(keys)
            held += len(keys) if keys is not None else 0
            if len(ends) >= want or held >= KEYS_PER_MESSAGE:
                self.conn.send(("stripes", ends, lists))
                ends, lists, held = [], [], 0
                want = min(STRIPES_PER_MESSAGE, want * 2)

    def run(self) -> None:
        self.conn.send(("ready", self.source.snapshot_id))
        while True:
            msg = self._next_message()
            op = msg[0]
            if op == "range":
                self._run_range(msg[1], msg[2], msg[3], msg[5])
            elif op == "plan":
                # the parent sends the planner nothing but "stop" while it plans: a waiting
                # message (or a closed pipe) ends a long flatfs listing between directories
                set_stop = getattr(getattr(self.source, "ds", None), "set_listing_stop", None)
                if set_stop is not None:
                    set_stop(self.conn.poll)
                if self.source.keyed:
                    self._plan_keyed(msg[1])
                else:
                    self._plan(msg[1], msg[2])
            elif op == "resnap":
                self.source.resnap()
                self.conn.send(("ready", self.source.snapshot_id))
            elif op == "stop":
                break
        ds = getattr(self.source, "ds", None)
        skipped = getattr(ds, "skipped", None)
        stats = (self.source.excluded_records, self.source.excluded_bytes,
                 skipped.count if skipped else 0, skipped.examples if skipped else [],
                 getattr(ds, "listing_passes", 0))
        # the store is released (LMDB: the read transaction ended) before the parent hears
        # of it: once it has every process's stats it need not wait for their exits
        self.source.close()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.conn.send(("stats", stats[0], stats[1], ru.ru_utime + ru.ru_stime,
                        ru.ru_maxrss * 1024, *stats[2:]))


def worker_main(conn: Any, shm_path: str | None, nslots: int, slot_size: int, kind: str,
                location: str, settings: ChunkSettings) -> None:
    try:
        tune_allocator()  # reuse large buffers instead of faulting in fresh pages per chunk
        _Worker(conn, shm_path, nslots, slot_size, kind, location, settings).run()
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        return  # the parent went away or cancelled us
    except BaseException as exc:
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        except OSError:
            pass
