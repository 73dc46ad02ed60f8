"""Chunk sources used inside worker processes: each turns key ranges of one snapshot of the
store into finished chunks (framed, hashed, compressed).

- LmdbSource: the native liblmdb scanner (dsbackup._ext.lmdbscan), one read transaction for
  the worker's whole life, so every range comes from the same snapshot; all work in native
  code with the GIL released.
- DatastoreSource: any parallel-readable backend (flatfs, SQLite) through its scan_batches
  fast path and the native Chunker.

A source also plans: `stripes()` walks the keys once and yields natural chunk boundaries that
cut the key space into stripes of work for the workers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from dsbackup._ext.framing import Chunker, is_boundary
from dsbackup.pipeline.central import ChunkSettings


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
        self._batches = iter(self.ds.scan_batches(start, end, max_bytes=s.chunk_max_bytes))
        self._ready.clear()

    def next_chunk(self, into: memoryview | None = None) -> Any:
        """The next chunk (`into` is not used: bodies come from the threaded Chunker)."""
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
            self._ready.extend(c.add_compress(keys, values, self.settings.level))
        return self._ready.popleft()

    def _finish_stats(self) -> None:
        if self._chunker is not None:
            self.excluded_records += self._chunker.excluded_records
            self.excluded_bytes += self._chunker.excluded_bytes
            self._chunker = None

    def stripes(self, min_records: int, min_bytes: int) -> Iterator[bytes]:
        """Planning: natural chunk boundaries at least `min_records` records apart; each ends
        one stripe of work and starts the next (keys only: sizes are not read)."""
        cs = self.settings.chunk_size
        since = 0
        for keys, _sizes in self.ds.scan_key_sizes():
            for k in keys:
                if since >= min_records and is_boundary(k, cs):
                    yield k
                    since = 0
                since += 1

    def close(self) -> None:
        self.ds.close()


class LmdbSource:
    def __init__(self, path: str, settings: ChunkSettings) -> None:
        from dsbackup._ext.lmdbscan import LmdbRangeScanner

        self.settings = settings
        self.scanner = LmdbRangeScanner(
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

    def next_chunk(self, into: memoryview | None = None) -> Any:
        """The next chunk; its body is compressed straight into `into` when it fits there
        (then body.data is a memoryview of `into`)."""
        return self.scanner.next_chunk(into)

    def stripes(self, min_records: int, min_bytes: int) -> Iterator[bytes]:
        """Planning: natural boundaries after at least `min_records` records or `min_bytes`
        bytes (value sizes come from LMDB's node headers; values are not read)."""
        while True:
            k = self.scanner.next_stripe_end(min_records, min_bytes)
            if k is None:
                return
            yield k

    def close(self) -> None:
        self.scanner.close()


def open_source(kind: str, location: str, settings: ChunkSettings) -> Any:
    if kind == "lmdb":
        return LmdbSource(location, settings)
    return DatastoreSource(location, settings)
