"""Chunk sources used inside worker processes: each turns key ranges of one snapshot of the
store into finished chunks (framed, hashed, compressed).

- LmdbSource: the native liblmdb scanner (dsbackup._ext.lmdbscan), one read transaction for
  the worker's whole life, so every range comes from the same snapshot; all work in native
  code with the GIL released.
- DatastoreSource: any parallel-readable backend (flatfs, SQLite) through its scan_batches
  fast path and the native Chunker.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from dsbackup._ext.framing import Chunker, is_boundary
from dsbackup.pipeline.central import ChunkSettings
from dsbackup.pipeline.keyspace import midpoint

SPLIT_SEARCH_KEYS = 200_000  # give up looking for a natural boundary after this many keys


class DatastoreSource:
    def __init__(self, uri: str, settings: ChunkSettings) -> None:
        from dsbackup.datastores import open_datastore

        self.ds = open_datastore(uri, readonly=True)
        self.settings = settings
        self.matcher = settings.matcher()
        self.snapshot_id: int | None = None
        self.excluded_records = 0
        self.excluded_bytes = 0
        self._chunker: Chunker | None = None
        self._batches: Any = None
        self._ready: deque = deque()

    def resnap(self) -> None:
        """No cross-process snapshot for these backends (see docs/ARCHITECTURE.md)."""

    def begin(self, start: bytes, end: bytes | None) -> None:
        self._finish_stats()
        s = self.settings
        self._chunker = Chunker(s.chunk_size, s.chunk_max_bytes, exclude=self.matcher,
                                catalog=s.catalog)
        self._end = end
        self._batches = iter(self.ds.scan_batches(start, end, max_bytes=s.chunk_max_bytes))
        self._ready.clear()

    def set_end(self, end: bytes) -> None:
        """Shrink the range; records at or past `end` are never turned into chunks."""
        self._end = end

    def next_chunk(self) -> Any:
        c = self._chunker
        if c is None:
            return None
        while not self._ready:
            batch = next(self._batches, None)
            if batch is None:
                last = c.finish_compress(self.settings.level)
                self._finish_stats()
                return last
            keys, values = batch
            if self._end is not None and keys and keys[-1] >= self._end:
                n = sum(1 for k in keys if k < self._end)
                keys, values = keys[:n], values[:n]
                self._batches = iter(())
            self._ready.extend(c.add_compress(keys, values, self.settings.level))
        return self._ready.popleft()

    def _finish_stats(self) -> None:
        if self._chunker is not None:
            self.excluded_records += self._chunker.excluded_records
            self.excluded_bytes += self._chunker.excluded_bytes
            self._chunker = None

    def split_key(self, pos: bytes, end: bytes | None) -> bytes | None:
        hi = end if end is not None else self.ds.last_key()
        if hi is None or hi <= pos:
            return None
        return self._boundary_after(midpoint(pos, hi), end)

    def _boundary_after(self, key: bytes, end: bytes | None) -> bytes | None:
        seen = 0
        cs = self.settings.chunk_size
        for keys, _sizes in self.ds.scan_key_sizes(key, end):
            for k in keys:
                if is_boundary(k, cs):
                    return k
            seen += len(keys)
            if seen > SPLIT_SEARCH_KEYS:
                return None
        return None

    def close(self) -> None:
        self.ds.close()


class LmdbSource:
    def __init__(self, path: str, settings: ChunkSettings) -> None:
        from dsbackup._ext.lmdbscan import LmdbSnapshotScanner

        self.settings = settings
        self.scanner = LmdbSnapshotScanner(
            path, chunk_size=settings.chunk_size, chunk_max_bytes=settings.chunk_max_bytes,
            level=settings.level, exclude=settings.matcher(), catalog=settings.catalog)

    @property
    def snapshot_id(self) -> int:
        return self.scanner.txn_id

    @property
    def excluded_records(self) -> int:
        return self.scanner.excluded_records

    @property
    def excluded_bytes(self) -> int:
        return self.scanner.excluded_bytes

    def resnap(self) -> None:
        self.scanner.renew()

    def begin(self, start: bytes, end: bytes | None) -> None:
        self.scanner.reset(start, end)

    def set_end(self, end: bytes) -> None:
        self.scanner.set_end(end)

    def next_chunk(self) -> Any:
        return self.scanner.next_chunk()

    def split_key(self, pos: bytes, end: bytes | None) -> bytes | None:
        hi = self.scanner.last_key_before(end)
        if hi is None or hi <= pos:
            return None
        return self.scanner.boundary_after(midpoint(pos, hi), end, SPLIT_SEARCH_KEYS)

    def close(self) -> None:
        self.scanner.close()


def open_source(kind: str, location: str, settings: ChunkSettings) -> Any:
    if kind == "lmdb":
        return LmdbSource(location, settings)
    return DatastoreSource(location, settings)
