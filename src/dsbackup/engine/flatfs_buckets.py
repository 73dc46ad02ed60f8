"""The flatfs incremental of a store over ``max_names`` names, bucket by bucket
(docs/INCREMENTAL.md, "A flatfs blockstore: listing speed", "A store over max_names").

The keys come a sorted bucket at a time (dsbackup.datastores.flatfs_keybuckets), never all at
once. :func:`walk` goes through the parent's chunks in key order (its index a block or page at
a time) beside a *window* of the listing: the keys of the bucket just read, plus those kept
from before it. Indexes are global (the position in the whole listing), so the clean-chunk
rules of dsbackup.engine.flatfs_incremental apply unchanged: before a parent chunk is checked
the window is extended, a bucket at a time, until it holds the chunk's first key and
``records`` keys after it (the chunk's keys and the key after it: the next natural boundary
or the parent's next chunk's first key), or the listing ends. A chunk or a boundary across a
bucket edge is thus seen whole. Keys below the parent chunk being checked are never in a
later clean chunk: the window drops them when it is extended.

Two walks: the first only marks the clean chunks (their raw bytes are read from the parent
once, as the in-memory path reads them, and shared out by payload length); the second
(:class:`Emit`) yields the items in key order, feeding each range between clean chunks to its
chunker as the window moves (a range may span many buckets), so the archive is the one the
in-memory path writes, byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from dsbackup._ext.flatlist import FlatKeys
from dsbackup._ext.framing import Chunker
from dsbackup.engine.write import References, store_or_reference

__all__ = ["Emit", "Marks", "Window", "parent_pages", "walk"]

READ_BATCH_BYTES = 8 << 20


def parent_pages(index: Any) -> Iterator[tuple[list[bytes], list[bytes], list[int],
                                                  list[int], list[int]]]:
    """(first keys, last keys, records, key digests, payload lengths) of the chunks of a
    parent index, a block (page) at a time, read from its arrays (no entry objects)."""
    for _, table, blob in index.blocks():
        keys = blob.tobytes()
        ko, fl = table["keys_off"].tolist(), table["first_len"].tolist()
        ends = (table["keys_off"] + table["first_len"] + table["last_len"]).tolist()
        mids = [o + f for o, f in zip(ko, fl)]
        yield ([keys[o:m] for o, m in zip(ko, mids)], [keys[m:e] for m, e in zip(mids, ends)],
               table["records"].tolist(), table["keys_xxh3"].tolist(),
               table["payload_len"].tolist())


class Window:
    """Consecutive keys of the listing, ``keys`` from global index ``base``."""

    def __init__(self, buckets: Iterable[FlatKeys]) -> None:
        self._it = iter(buckets)
        self.keys = FlatKeys.from_names([], 0)
        self.base = 0
        self.more = True  # buckets left

    @property
    def end(self) -> int:
        return self.base + len(self.keys)

    def extend(self, keep: int) -> bool:
        """Add the next bucket, dropping the keys below global index ``keep``; False at the
        end of the listing."""
        nxt = next(self._it, None) if self.more else None
        if nxt is None:
            self.more = False
            return False
        self.keys = self.keys.join(keep - self.base, nxt)
        self.base = keep
        return True


class Sink(Protocol):
    def keep(self, at: int) -> int: ...

    def before(self, w: Window, j: int, at: int) -> Iterable[Any]: ...

    def clean(self, w: Window, j: int, lo: int, hi: int, plen: int) -> Iterable[Any]: ...

    def finish(self, w: Window) -> Iterable[Any]: ...


def _parent_chunks(index: Any) -> Iterator[tuple[bytes, bytes, int, int, int, bytes | None]]:
    """(first key, last key, records, key digest, payload length, the next chunk's first
    key or None) of every chunk of the parent, in order, a block (page) read at a time."""
    if index is None:  # none usable
        return
    pages = parent_pages(index)
    page = next(pages, None)
    while page is not None:
        firsts, lasts, records, kxs, plens = page
        page = next(pages, None)
        after = firsts[1:] + ([page[0][0]] if page is not None else [None])
        yield from zip(firsts, lasts, records, kxs, plens, after)


def walk(buckets: Iterable[FlatKeys], index: Any, chunk_size: int, sink: Sink
         ) -> Iterator[Any]:
    """The parent's chunks (none when `index` is None: none can be referenced) checked
    against the listing (module doc); what `sink` yields."""
    w = Window(buckets)
    prev_hi = -1
    for j, (f, last, recs, kx, plen, nxt) in enumerate(_parent_chunks(index)):
        while w.more:  # the chunk's first key and `recs` keys after it, or the end
            p = w.keys.find(f)
            if len(w.keys) - p > recs:
                break
            yield from sink.before(w, j, w.base + p)
            w.extend(sink.keep(w.base + p))
        keys = w.keys
        lo = keys.check_chunk(f, last, recs, kx)
        if lo < 0:
            continue
        hi = lo + recs
        if (w.base + lo in (0, prev_hi) or keys.is_boundary(lo, chunk_size)) and (
                (hi == len(keys) and not w.more) or keys.is_boundary(hi, chunk_size)
                or (nxt is not None and keys.trusted(hi) and keys.equals(hi, nxt))):
            yield from sink.clean(w, j, w.base + lo, w.base + hi, plen)
            prev_hi = w.base + hi
    yield from sink.finish(w)


class Marks:
    """The first walk: a mark per clean parent chunk and their payload bytes."""

    def __init__(self, chunks: int) -> None:
        self.wanted = bytearray(chunks)
        self.payload = 0
        self.count = 0

    def keep(self, at: int) -> int:
        return at

    def before(self, w: Window, j: int, at: int) -> Iterable[Any]:
        return ()

    def clean(self, w: Window, j: int, lo: int, hi: int, plen: int) -> Iterable[Any]:
        self.wanted[j] = 1
        self.payload += plen
        self.count += 1
        return ()

    def finish(self, w: Window) -> Iterable[Any]:
        while w.extend(w.end):  # to the end: the buckets are all cut for the next walk
            pass
        return ()


class Emit:
    """The second walk: the items, as FlatfsIncremental.items yields them."""

    def __init__(self, ds: Any, index: Any, chunk_size: int, chunk_max_bytes: int,
                 match: Any, pool: ThreadPoolExecutor, level: int, catalog: bool, counts: Any,
                 clean_raw: int, clean_payload: int) -> None:
        self.ds, self.index = ds, index
        self.cs, self.cmb = chunk_size, chunk_max_bytes
        self.match, self.pool, self.level, self.catalog = match, pool, level, catalog
        self.counts = counts
        self.left_raw, self.left_payload = clean_raw, clean_payload
        self.fed = 0  # keys below this global index are read or in a run
        self.chunker: Chunker | None = None  # the range being read, if any
        self.run: list[int] | None = None  # [first seq, last seq, lo, hi] not yet yielded

    def keep(self, at: int) -> int:
        return self.fed

    def before(self, w: Window, j: int, at: int) -> Iterator[Any]:
        r = self.run
        if r is not None and (j != r[1] + 1 or at != r[3]):  # chunk j cannot extend it
            yield from self._flush()
        if self.run is None:  # no key below `at` is in a clean chunk still to come
            yield from self._feed(w, at)

    def clean(self, w: Window, j: int, lo: int, hi: int, plen: int) -> Iterator[Any]:
        r = self.run
        if r is not None and j == r[1] + 1 and lo == r[3]:
            r[1], r[3] = j, hi
            self.fed = hi
            return
        if r is not None:
            yield from self._flush()
        yield from self._feed(w, lo)
        yield from self._end_range()
        self.run = [j, j, lo, hi]
        self.fed = hi

    def finish(self, w: Window) -> Iterator[Any]:
        if self.run is not None:
            yield from self._flush()
        while True:
            yield from self._feed(w, w.end)
            if not w.extend(self.fed):
                break
        yield from self._end_range()

    def _items(self, chunks: Iterator[Any]) -> Iterator[Any]:
        return store_or_reference(chunks, self.match, self.pool, self.level, self.catalog,
                                  self.counts)

    def _feed(self, w: Window, at: int) -> Iterator[Any]:
        """The keys from ``fed`` to global index ``at`` into the range being read."""
        if at <= self.fed:
            return
        keys = w.keys.keys(self.fed - w.base, at - w.base)
        self.fed = at
        if self.chunker is None:
            self.chunker = Chunker(self.cs, self.cmb, catalog=self.catalog)
        yield from self._items(self._chunks(self.chunker, keys))

    def _chunks(self, chunker: Chunker, keys: list[bytes]) -> Iterator[Any]:
        for ks, values in self.ds.read_keys(keys, max_bytes=READ_BATCH_BYTES):
            yield from chunker.add(ks, values)

    def _end_range(self) -> Iterator[Any]:
        if self.chunker is None:
            return
        last = self.chunker.finish()
        self.chunker = None
        if last is not None:
            yield from self._items(iter([last]))

    def _flush(self) -> Iterator[Any]:
        """The run of clean chunks, an index block (page) of the parent at a time."""
        assert self.run is not None
        j = range(self.run[0], self.run[1] + 1)
        self.run = None
        while len(j):
            first, table, keys = self.index.block(j.start)
            rows = table[j.start - first:min(j.stop, first + len(table)) - first]
            pl = int(rows["payload_len"].sum(dtype="uint64"))
            part = self.left_raw if self.left_payload == pl else \
                self.left_raw * pl // max(1, self.left_payload)
            self.left_raw -= part
            self.left_payload -= pl
            self.counts.referenced += len(rows)
            yield References(j.start, rows, keys, part)
            j = range(j.start + len(rows), j.stop)
