"""Worker process of the parallel backup: scans the key ranges the parent assigns and hands
finished chunks back through slots of a shared memory file (one copy of the compressed bytes;
the parent writes them to the archive straight from the shared mapping).

Messages, worker -> parent:
  ("ready", snapshot_id)
  ("chunk", range_id, slot, meta, inline_body, catalog)   slot -1: body is inline (too large)
  ("done", range_id)
  ("split", range_id, key_or_None)                       reply to a split request
  ("stats", excluded_records, excluded_bytes)           before exiting
  ("error", message)
Parent -> worker:
  ("range", range_id, start, end) | ("free", slot) | ("split", range_id) | ("resnap",) | ("stop",)
"""

from __future__ import annotations

import mmap
import os
import traceback
from collections import deque
from typing import Any

from dsbackup._ext.checksum import xxh3_64
from dsbackup._ext.compress import deflate_body
from dsbackup.pipeline.central import ChunkSettings
from dsbackup.pipeline.sources import open_source


def chunk_meta(c: Any) -> tuple:
    b = c.body
    return (c.record_count, bytes(c.first_key), bytes(c.last_key), c.keys_xxh3,
            c.payload_xxh3, c.raw_bytes, b.crc32, b.size, b.input_len, len(b.data))


class _Worker:
    def __init__(self, conn: Any, shm_path: str, nslots: int, slot_size: int, kind: str,
                 location: str, settings: ChunkSettings) -> None:
        self.conn = conn
        fd = os.open(shm_path, os.O_RDWR)
        try:
            self.mm = mmap.mmap(fd, nslots * slot_size)
        finally:
            os.close(fd)
        self.slot_size = slot_size
        self.free = deque(range(nslots))
        self.inbox: deque = deque()
        self.settings = settings
        self.source = open_source(kind, location, settings)
        # current range
        self.rid: int | None = None
        self.pos = b""
        self.end: bytes | None = None
        self.cut: bytes | None = None

    def _handle(self, msg: tuple) -> None:
        """Handle messages that may arrive while a range is being scanned."""
        op = msg[0]
        if op == "free":
            self.free.append(msg[1])
        elif op == "split":
            self._split(msg[1])
        else:
            self.inbox.append(msg)

    def _split(self, rid: int) -> None:
        key = None
        if rid == self.rid:
            end = self.cut if self.cut is not None else self.end
            key = self.source.split_key(self.pos, end)
            if key is not None and (key <= self.pos or (end is not None and key >= end)):
                key = None
            if key is not None:
                self.cut = key
                self.source.set_end(key)
        self.conn.send(("split", rid, key))

    def _poll(self) -> None:
        while self.conn.poll():
            self._handle(self.conn.recv())

    def _next_message(self) -> tuple:
        while not self.inbox:
            self._handle(self.conn.recv())
        return self.inbox.popleft()

    def _send_chunk(self, c: Any) -> None:
        while not self.free:
            self._handle(self.conn.recv())
        catalog = None
        if self.settings.catalog:
            cat = c.catalog
            cb = deflate_body(cat, self.settings.level)
            catalog = (cb.data, cb.crc32, cb.size, cb.input_len, xxh3_64(cat))
        data = c.body.data
        n = len(data)
        if n <= self.slot_size:
            slot = self.free.popleft()
            off = slot * self.slot_size
            self.mm[off : off + n] = data
            self.conn.send(("chunk", self.rid, slot, chunk_meta(c), None, catalog))
        else:
            self.conn.send(("chunk", self.rid, -1, chunk_meta(c), bytes(data), catalog))

    def _run_range(self, rid: int, start: bytes, end: bytes | None) -> None:
        self.rid, self.pos, self.end, self.cut = rid, start, end, None
        self.source.begin(start, end)
        while True:
            c = self.source.next_chunk()
            self._poll()
            if c is None:
                break
            if self.cut is not None and c.first_key >= self.cut:
                break
            # committed to sending c: a split accepted while we wait for a slot must lie past it
            self.pos = bytes(c.last_key)
            self._send_chunk(c)
        self.rid = None
        self.conn.send(("done", rid))

    def run(self) -> None:
        self.conn.send(("ready", self.source.snapshot_id))
        while True:
            msg = self._next_message()
            if msg[0] == "range":
                self._run_range(msg[1], msg[2], msg[3])
            elif msg[0] == "resnap":
                self.source.resnap()
                self.conn.send(("ready", self.source.snapshot_id))
            elif msg[0] == "stop":
                break
        self.conn.send(("stats", self.source.excluded_records, self.source.excluded_bytes))
        self.source.close()


def worker_main(conn: Any, shm_path: str, nslots: int, slot_size: int, kind: str,
                location: str, settings: ChunkSettings) -> None:
    try:
        _Worker(conn, shm_path, nslots, slot_size, kind, location, settings).run()
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        return  # the parent went away or cancelled us
    except BaseException as exc:
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        except OSError:
            pass
