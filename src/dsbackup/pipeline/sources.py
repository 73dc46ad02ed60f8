"""Chunk sources used inside worker processes: each turns key ranges of one snapshot of the
store into finished chunks (framed, hashed, compressed).

- LmdbSource: the native liblmdb scanner (dsbackup._ext.lmdbscan), one read transaction for
  the worker's whole life, so every range comes from the same snapshot; all work in native
  code with the GIL released.
- DatastoreSource: any parallel-readable backend (flatfs, SQLite) through its scan_batches
  fast path and the native Chunker.

A source also plans: `stripes()` walks the keys once and yields natural chunk boundaries that
cut the key space into stripes of work for the workers. A store read by key list (`keyed`:
flatfs, whose key ranges map to no subset of its shard directories, so a range scan lists the
whole store) plans with `keyed_stripes()` instead, which also yields each stripe's keys; a
worker handed them reads exactly those files (`begin(start, end, keys)`) and lists nothing.

An incremental backup (dsbackup.engine.incremental) uses the same sources in its own process
(a datastore object, or LMDB natively): `plans()` yields each chunk's plan from keys and value
sizes only, `frame(start, end)` frames a key range without compressing it, `has_prefix` says
whether any key starts with a prefix, and `excluded` counts what the exclude patterns left out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from dsbackup._ext.framing import Chunker, KeyPlanner, is_boundary
from dsbackup.pipeline.central import ChunkSettings

# first, last key, records, payload length, keys XXH3, raw bytes
Plan = tuple[bytes, bytes, int, int, int, int]
FRAME_BATCH_BYTES = 8 << 20  # values read per batch when framing a range in-process


class DatastoreSource:
    """`uri`: opened read-only here and closed by close(); or an opened datastore, which
    stays the caller's."""

    def __init__(self, uri: Any, settings: ChunkSettings) -> None:
        self._owned = isinstance(uri, str)
        if self._owned:
            from dsbackup.datastores import open_datastore

            self.ds = open_datastore(uri, readonly=True)
        else:
            self.ds = uri
        self.settings = settings
        self.matcher = settings.matcher()
        self.snapshot_id: int | None = None
        self.excluded_records = 0
        self.excluded_bytes = 0
        self._chunker: Chunker | None = None
        self._batches: Any = None
        self._ready: deque = deque()
        self._planner: KeyPlanner | None = None
        # stripes carry their keys (the store lists them in order, reads a list of keys)
        self.keyed = callable(getattr(self.ds, "scan_keys", None)) and callable(
            getattr(self.ds, "read_keys", None))
        # SQLite: every scan of this source in one read transaction (the planning walk and
        # the value reads of an incremental; a parallel worker's stripes, see ParallelScan)
        self._pin = getattr(self.ds, "pin_snapshot", None)
        if self._pin is not None:
            self._pin()

    def resnap(self) -> None:
        """A new snapshot where the store pins one (SQLite: ParallelScan retries until no
        commit came while its processes began theirs); flatfs has none."""
        if self._pin is not None:
            self._pin()

    def begin(self, start: bytes, end: bytes | None, keys: list[bytes] | None = None
              ) -> None:
        """Scan ``[start, end)``: the given `keys` of it (from keyed_stripes), else a range
        scan of the store."""
        self._finish_stats()
        s = self.settings
        self._chunker = Chunker(s.chunk_size, s.chunk_max_bytes, exclude=self.matcher,
                                catalog=s.catalog)
        if keys is not None:
            self._batches = iter(self.ds.read_keys(keys, max_bytes=s.chunk_max_bytes))
        else:
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

    def _boundary(self, key: bytes, chunk_size: int) -> bool:
        """Whether a scan's chunk can start at `key`: a natural boundary that the exclude
        patterns keep (the chunker never cuts at an excluded key: a stripe starting there
        would cut a chunk that a single scan does not)."""
        m = self.matcher
        return is_boundary(key, chunk_size) and (m is None or not m.match(key))

    def stripes(self, min_records: int, min_bytes: int) -> Iterator[bytes]:
        """Planning: natural chunk boundaries at least `min_records` records apart; each ends
        one stripe of work and starts the next (keys only: sizes are not read)."""
        cs = self.settings.chunk_size
        cut = self._boundary
        since = 0
        for keys, _sizes in self.ds.scan_key_sizes():
            for k in keys:
                if since >= min_records and cut(k, cs):
                    yield k
                    since = 0
                since += 1

    def keyed_stripes(self, min_records: int, max_keys: int
                      ) -> Iterator[tuple[bytes | None, list[bytes] | None]]:
        """Planning of a `keyed` store: the stripes of stripes() as ``(end, keys)``, `end`
        the next stripe's first key (None for the last stripe), `keys` the stripe's keys in
        order, from one listing (no file opened). A stripe of more than `max_keys` keys
        comes without them (None: its worker scans the range)."""
        cs = self.settings.chunk_size
        cut = self._boundary
        since = 0
        keys: list[bytes] | None = []
        for batch in self.ds.scan_keys():
            i, j, n = 0, 0, len(batch)  # batch[j:i] belongs to the current stripe
            while i < n:
                if since < min_records:  # no boundary this close to the stripe's start
                    step = min(min_records - since, n - i)
                    since += step
                    i += step
                    continue
                if cut(batch[i], cs):
                    if keys is not None:
                        keys.extend(batch[j:i])
                    yield batch[i], (keys if keys is None or len(keys) <= max_keys
                                     else None)
                    keys, j, since = [], i, 0
                since += 1
                i += 1
            if keys is not None:
                keys.extend(batch[j:n])
                if len(keys) > max_keys:
                    keys = None  # too many to hand along: the worker lists the range
        yield None, keys if keys is None or len(keys) <= max_keys else None

    def plans(self, start: bytes = b"") -> Iterator[Plan]:
        """Every chunk's plan from keys and value sizes (the native KeyPlanner), from the
        first key >= `start` on (a chunk starts there)."""
        s = self.settings
        self._planner = planner = KeyPlanner(s.chunk_size, s.chunk_max_bytes, self.matcher)
        for keys, sizes in self.ds.scan_key_sizes(start):
            yield from planner.add(keys, sizes)
        last = planner.finish()
        if last is not None:
            yield last

    def frame(self, start: bytes, end: bytes | None) -> Iterator[Any]:
        """The framed (not compressed) chunks of [start, end)."""
        s = self.settings
        chunker = Chunker(s.chunk_size, s.chunk_max_bytes, exclude=self.matcher,
                          catalog=s.catalog)
        for keys, values in self.ds.scan_batches(start, end, max_bytes=FRAME_BATCH_BYTES):
            yield from chunker.add(keys, values)
        last = chunker.finish()
        self.excluded_records += chunker.excluded_records
        self.excluded_bytes += chunker.excluded_bytes
        if last is not None:
            yield last

    @property
    def excluded(self) -> tuple[int, int]:
        """(records, bytes) left out: by the planning walk when there was one."""
        if self._planner is not None:
            return self._planner.excluded_records, self._planner.excluded_bytes
        return self.excluded_records, self.excluded_bytes

    def has_prefix(self, prefix: bytes) -> bool:
        k = self.ds.seek_key(prefix)
        return k is not None and k.startswith(prefix)

    def close(self) -> None:
        if self._owned:
            self.ds.close()
        elif self._pin is not None:
            self.ds.unpin_snapshot()


class LmdbSource:
    """`claim_for`: claim the environment in this process's registry for the scanner's life,
    naming the user (py-lmdb may not open it here meanwhile)."""

    def __init__(self, path: str, settings: ChunkSettings, claim_for: str | None = None,
                 ) -> None:
        from dsbackup._ext.lmdbscan import LmdbRangeScanner

        self.settings = settings
        self.keyed = False  # stripes are ranges of the B-tree
        self._claim: Any = None
        self._planned = False
        if claim_for is not None:
            from dsbackup.datastores.lmdb import claim

            self._claim = claim(path, claim_for)
            self._claim.__enter__()
        try:
            self.scanner = LmdbRangeScanner(
                path, chunk_size=settings.chunk_size, chunk_max_bytes=settings.chunk_max_bytes,
                level=settings.level, exclude=settings.matcher(), catalog=settings.catalog)
        except BaseException:
            self._release()
            raise

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

    def begin(self, start: bytes, end: bytes | None, keys: list[bytes] | None = None
              ) -> None:
        """`keys`: not used (LMDB stripes are planned without them)."""
        self.scanner.reset(start, end)

    def next_chunk(self, into: memoryview | None = None) -> Any:
        """The next chunk; its body is compressed straight into `into` when it fits there
        (then body.data is a memoryview of `into`)."""
        return self.scanner.next_chunk(into)

    def stripes(self, min_records: int, min_bytes: int) -> Iterator[bytes]:
        """Planning: natural boundaries about `min_records` records or `min_bytes` bytes
        apart. Values inline in the leaves: from hints read off the branch pages, each moved
        to the next natural boundary (a walk of ~chunk_size keys a stripe, not of every key);
        otherwise a walk of every key and value size (values are not read)."""
        hints = self.scanner.stripe_hints(min_records, min_bytes)
        if hints is not None:
            last = b""
            for h in hints:
                if h <= last:
                    continue  # the previous stripe end is past this hint already
                k = self.scanner.snap(h)
                if k is None:
                    return
                yield k
                last = k
            return
        while True:
            k = self.scanner.next_stripe_end(min_records, min_bytes)
            if k is None:
                return
            yield k

    def plans(self, start: bytes = b"") -> Iterator[Plan]:
        """Every chunk's plan: the scanner's keys-only walk (keys and node headers), from
        the first key >= `start` on (a chunk starts there)."""
        self._planned = True
        if start:
            self.scanner.plan_from(start)
        while True:
            batch = self.scanner.plan_chunks(4096)
            if not batch:
                return
            yield from batch

    def frame(self, start: bytes, end: bytes | None) -> Iterator[Any]:
        """The chunks of [start, end), framed (compressed too when settings.level >= 0)."""
        self.scanner.reset(start, end)
        while (c := self.scanner.next_chunk()) is not None:
            yield c

    @property
    def excluded(self) -> tuple[int, int]:
        """(records, bytes) left out: by the planning walk when there was one."""
        if self._planned:
            return self.scanner.planned_excluded
        return self.scanner.excluded_records, self.scanner.excluded_bytes

    def has_prefix(self, prefix: bytes) -> bool:
        k = self.scanner.last_key_before(prefix[:-1] + bytes([prefix[-1] + 1]))
        return k is not None and k.startswith(prefix)

    def close(self) -> None:
        try:
            self.scanner.close()
        finally:
            self._release()

    def _release(self) -> None:
        if self._claim is not None:
            self._claim.__exit__(None, None, None)
            self._claim = None


def open_source(kind: str, location: str, settings: ChunkSettings) -> Any:
    if kind == "lmdb":
        return LmdbSource(location, settings)
    return DatastoreSource(location, settings)
