"""Incremental backups of a flatfs blockstore at listing speed (docs/INCREMENTAL.md,
"Unchanged flatfs blocks").

A flatfs blockstore names each file by the hash of its value, so a chunk of the parent whose
keys are all still there, and nothing else between them, holds the same values: it can be
referenced without reading or even stat-ing a file. :class:`FlatfsIncremental` lists the store
once natively (sorted keys and the file audit, flatfs_fastlist.py) and finds the parent's
chunks that the listing proves unchanged (:func:`clean_chunks`); only the key ranges between
them are read, chunked from scratch and compared with the parent by payload XXH3, as the
general path does.

A parent chunk ``j`` with keys ``lo .. hi - 1`` of the listing is *clean* when

- those keys are exactly its keys: same first and last key, same count, same key digest
  (FORMAT.md §4.2), and every one of them is trusted (a regular file whose name is the base32
  of a multihash or CIDv1, ext/flatlist.pyx): its value is the one the parent holds;
- a chunk starts before ``lo`` in the new state: ``lo`` is 0, or the previous clean chunk ends
  at ``lo``, or key ``lo`` is a natural boundary (FORMAT.md §4.1);
- a chunk ends after ``hi - 1``: ``hi`` is the end of the listing, or key ``hi`` is a natural
  boundary, or it is the parent's next chunk's first key and trusted (same record, so the
  same size cut as in the parent).

The chunker then cuts exactly the parent's chunk there (its rules see only these records and
settings), and each range between clean chunks starts and ends at a cut, so it is chunked on
its own. Nothing else is assumed; any other key (a symbolic link, a name that is not a hash)
makes its chunk be read and compared.

A store over the flatfs URI's ``max_names`` keys is not held whole: the bounded listing stops
(``FlatScan``'s ``max_keys``) and the same rules run bucket by bucket beside the parent's
index (dsbackup.engine.flatfs_buckets), writing the same archive.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dsbackup._ext.flatlist import FlatKeys
from dsbackup._ext.framing import Chunker
from dsbackup.archive.reader import ArchiveReader
from dsbackup.engine.config import BackupConfig
from dsbackup.engine.flatfs_buckets import Emit, Marks, parent_pages, walk
from dsbackup.engine.write import References, store_or_reference
from dsbackup.errors import BackupError

__all__ = ["applies", "clean_chunks", "FlatfsIncremental"]

READ_BATCH_BYTES = 8 << 20


def _is_flatfs(source: Any) -> bool:
    from dsbackup.datastores.flatfs import FlatfsDatastore

    if isinstance(source, FlatfsDatastore):
        return True
    if isinstance(source, (str, os.PathLike)):
        from dsbackup.datastores.registry import detect_scheme, parse_uri

        try:
            scheme, path, _ = parse_uri(os.fspath(source))
            return (scheme or detect_scheme(path)) == "flatfs"
        except Exception:  # not a URI we know: the general path reports it
            return False
    return False


def applies(source: Any, cfg: BackupConfig) -> bool:
    """True when an incremental backup of `source` takes this path (a flatfs store, content
    keys trusted, no exclude patterns); it then makes the file audit itself, from its own
    listing."""
    return cfg.trust_content_keys and not cfg.exclude_patterns and _is_flatfs(source)


def clean_chunks(keys: FlatKeys, index: Any, chunk_size: int,
                 first: int = 0) -> list[tuple[int, int, int, int]]:
    """``(parent seq, first and end listing index, payload length)`` of every chunk of the
    parent `index` the listing proves unchanged (module doc), in order, among the keys from
    listing index `first` on (a chunk starts there: a resumed backup's cut, docs/FORMAT.md
    §11.5)."""
    n = len(keys)
    out: list[tuple[int, int, int, int]] = []
    prev_hi = -1
    check, boundary, trusted, equals = (keys.check_chunk, keys.is_boundary, keys.trusted,
                                        keys.equals)
    pages = parent_pages(index)
    page = next(pages, None)
    j = 0
    while page is not None:
        firsts, lasts, records, kxs, plens = page
        page = next(pages, None)  # its first key follows this page's last chunk
        after = firsts[1:] + ([page[0][0]] if page is not None else [None])
        for f, last, recs, kx, plen, nxt in zip(firsts, lasts, records, kxs, plens, after):
            lo = check(f, last, recs, kx)
            if lo >= first:  # else not there (-1), or below the cut
                hi = lo + recs
                if (lo in (first, prev_hi) or boundary(lo, chunk_size)) and (
                        hi == n or boundary(hi, chunk_size)
                        or (nxt is not None and trusted(hi) and equals(hi, nxt))):
                    out.append((j, lo, hi, plen))
                    prev_hi = hi
            j += 1
    return out


class FlatfsIncremental:
    """The items of an incremental backup of a flatfs store (see module doc): a source for
    dsbackup.engine.incremental's write loop."""

    snapshot_id = None
    excluded = (0, 0)
    # the part of clean_raw no References carried: all of it when no clean chunk lies after a
    # resumed backup's cut, which leaves only the kept references' (`below`) to count
    unsent_raw = 0

    def __init__(self, ds: Any, preader: ArchiveReader, cfg: BackupConfig, chunk_size: int,
                 chunk_max_bytes: int, usable: bool, start: bytes = b"",
                 below: bytearray | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        """`start`: back up the keys from `start` on only (a resumed backup's rest); `below`:
        the parent chunks its kept part refers to (marks), whose raw bytes the clean chunks'
        share then carries (dsbackup.engine.resume); `should_stop`: asked while a store over
        ``max_names`` keys is listed (True stops it: Cancelled)."""
        self.ds = ds
        self.cs, self.cmb = chunk_size, chunk_max_bytes
        self.index = preader.index
        self.buckets: Any = None  # a store over max_names keys (flatfs_buckets.py)
        self.usable = usable
        listing = ds.listing(cfg.effective_workers, bounded=True)
        if listing.over:
            self._init_buckets(preader, cfg, usable, start, below, should_stop)
            return
        self.audit = listing.audit
        self._check_audit(cfg)
        self.keys: FlatKeys = listing.keys  # type: ignore[assignment]
        self.first = self.keys.find(start) if start else 0
        self.clean = (clean_chunks(self.keys, self.index, chunk_size, self.first) if usable
                      else [])
        self.clean_raw = self._clean_raw(preader, below)

    def _check_audit(self, cfg: BackupConfig) -> None:
        if self.audit.count and not cfg.skip_foreign:
            raise BackupError(self.audit.message(self.ds.uri) + "; nothing was written (pass "
                              "--skip-foreign to back up the rest: the backup then ends "
                              "with warnings, exit 1)")

    def _init_buckets(self, preader: ArchiveReader, cfg: BackupConfig, usable: bool,
                      start: bytes, below: bytearray | None,
                      should_stop: Callable[[], bool] | None) -> None:
        """A store over max_names keys: listed into buckets, the clean chunks marked by a
        first walk (dsbackup.engine.flatfs_buckets)."""
        self.buckets = self.ds.key_buckets(start, should_stop)
        try:
            self.audit = self.buckets.audit
            self._check_audit(cfg)
            marks = Marks(len(self.index))
            if usable:
                for _ in walk(self.buckets.buckets(), self.index, self.cs, marks):
                    pass
            self.clean_payload = marks.payload
            self.clean = []
            self.clean_raw = self._clean_raw(preader, below, marks.wanted)
        except BaseException:
            self.close()
            raise

    def _clean_raw(self, preader: ArchiveReader, also: bytearray | None,
                   wanted: bytearray | None = None) -> int:
        """Key and value bytes of the clean chunks (the summary's raw_bytes needs them; the
        index does not hold them), and of the parent chunks marked in `also` (a resumed
        backup's references below its cut): read from the parent (dsbackup.engine.parentraw;
        nothing when nothing changed)."""
        # numpy (parentraw's) imported here, not with this module: every backup imports this
        # module (engine/backup.py) and numpy's import is start-up before the first chunk
        import numpy as np

        from dsbackup.engine.parentraw import marks, raw_bytes_of

        if wanted is None:
            wanted = marks(len(self.index), [c[0] for c in self.clean])
        if also is not None:
            np.frombuffer(wanted, np.uint8)[:] |= np.frombuffer(also, np.uint8)
        return raw_bytes_of(preader, wanted)

    def close(self) -> None:
        """The spill files go (a store over max_names keys); the datastore belongs to the
        caller. Idempotent."""
        if self.buckets is not None:
            self.buckets.close()

    def _frame(self, lo: int, hi: int, catalog: bool) -> Iterator[Any]:
        chunker = Chunker(self.cs, self.cmb, catalog=catalog)
        for keys, values in self.ds.read_keys(self.keys.keys(lo, hi),
                                              max_bytes=READ_BATCH_BYTES):
            yield from chunker.add(keys, values)
        last = chunker.finish()
        if last is not None:
            yield last

    def items(self, match: Any, pool: ThreadPoolExecutor, level: int, catalog: bool,
              counts: Any) -> Iterator[Any]:
        """In key order: References (runs of consecutive parent chunks, with their raw
        bytes) or the Future of a compressed chunk, as engine.incremental.IncrementalStream
        yields them."""
        if self.buckets is not None:
            emit = Emit(self.ds, self.index, self.cs, self.cmb, match, pool, level, catalog,
                        counts, self.clean_raw, self.clean_payload)
            yield from walk(self.buckets.buckets(), self.index if self.usable else None,
                            self.cs, emit)
            self.unsent_raw = emit.left_raw
            return
        payload = sum(c[3] for c in self.clean)
        left_raw, left_payload = self.clean_raw, payload
        pos = self.first

        def run(lo: int, hi: int) -> Iterator[Any]:
            return store_or_reference(self._frame(lo, hi, catalog), match, pool, level,
                                      catalog, counts)

        for j, lo, hi in self._runs():
            if lo > pos:
                yield from run(pos, lo)
            n = j.stop - j.start
            while n:  # the run, an index block (page) of the parent at a time
                first, table, keys = self.index.block(j.start)
                rows = table[j.start - first:min(j.stop, first + len(table)) - first]
                # the raw bytes of each clean chunk are not known, only their sum: shared out
                # by payload length (only the sum reaches the archive; progress reads the parts)
                pl = int(rows["payload_len"].sum(dtype="uint64"))
                part = left_raw if left_payload == pl else \
                    left_raw * pl // max(1, left_payload)
                left_raw -= part
                left_payload -= pl
                counts.referenced += len(rows)
                yield References(j.start, rows, keys, part)
                j = range(j.start + len(rows), j.stop)
                n = len(j)
            pos = hi
        if pos < len(self.keys):
            yield from run(pos, len(self.keys))
        self.unsent_raw = left_raw

    def _runs(self) -> Iterator[tuple[range, int, int]]:
        """The clean chunks as runs: (parent seqs, first and end listing index) of chunks
        that follow one another both in the parent and in the listing."""
        start = prev = -2
        lo = hi = 0
        for j, at, end, _ in self.clean:
            if j != prev + 1 or at != hi:
                if start >= 0:
                    yield range(start, prev + 1), lo, hi
                start, lo = j, at
            prev, hi = j, end
        if start >= 0:
            yield range(start, prev + 1), lo, hi
