"""Reading a paged index (docs/FORMAT.md §11.3): the root, and pages decoded as numpy structured
arrays straight from the member bytes (no Python object per entry); a few decoded pages are
cached. Every page is checked when it is read (its own fields, its agreement with its root
entry, and the members it describes tiling the file between the previous page and itself), so
reading every page checks the whole index. numpy is imported here only: a command that never
opens a paged archive does not pay its start-up."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator

import numpy as np

from dsbackup.archive.index import (
    _CATALOG,
    _ENTRY,
    CATALOG_DTYPE,
    ENTRY_DTYPE,
    FLAG_PARENT,
    KNOWN_FLAGS,
    MAX_EPOCH,
    CatalogEntry,
    ChunkEntry,
    _first_not_below,
)
from dsbackup.archive.pages import (
    _MEMBER_MIN,
    _PAGE_HEADER,
    _ROOT_ENTRY,
    _ROOT_HEADER,
    CACHE_PAGES,
    MAX_PAGE_ENTRIES,
    MIN_PAGE_ENTRIES,
    PAGE_MAGIC,
    ROOT_MAGIC,
    SEQUENTIAL_PAGES,
    valid_page_entries,
)
from dsbackup.errors import IntegrityError

ROOT_DTYPE = np.dtype([
    ("offset", "<u8"), ("length", "<u8"), ("member_xxh3", "<u8"), ("first_seq", "<u8"),
    ("count", "<u8"), ("keys_off", "<u8"), ("first_len", "<u4"), ("last_len", "<u4"),
    ("records", "<u8"),
])
assert ENTRY_DTYPE.itemsize == _ENTRY.size == 88
assert CATALOG_DTYPE.itemsize == _CATALOG.size == 40
assert ROOT_DTYPE.itemsize == _ROOT_ENTRY.size == 64


class _Page:
    __slots__ = ("entries", "catalogs", "keys")

    def __init__(self, entries: np.ndarray, catalogs: np.ndarray,
                 keys: bytes | memoryview) -> None:
        self.entries = entries
        self.catalogs = catalogs
        self.keys = keys  # a view of the page's own bytes (no copy), or bytes

    def first_key(self, j: int) -> bytes:
        e = self.entries[j]
        k = int(e["keys_off"])
        return bytes(self.keys[k : k + int(e["first_len"])])

    def last_key(self, j: int) -> bytes:
        e = self.entries[j]
        k = int(e["keys_off"]) + int(e["first_len"])
        return bytes(self.keys[k : k + int(e["last_len"])])


PageReader = Callable[[int, int, int, int], "bytes | memoryview"]


class PagedIndex:
    """A paged index, opened from its root. Pages are read through `read_page(page, offset,
    length, member_xxh3)`, which returns the page member's (checked, decrypted) data.
    `chunk_start`: where the chunk area begins (end of the manifest or the node member);
    `index_offset`: where the root member starts. The root is checked here, whole (it is
    small); a damaged root raises IntegrityError."""

    paged = True

    def __init__(self, data: bytes | memoryview, read_page: PageReader, *, base: int,
                 index_offset: int, where: str,
                 page_epoch: Callable[[int], int] | None = None) -> None:
        self._where = where
        # an encrypted archive: the epoch page p was sealed under, which every entry of the
        # page must record (docs/FORMAT.md §11.4); None: entries record no epoch check
        self._page_epoch = page_epoch
        if len(data) < _ROOT_HEADER.size:
            raise self._err(f"{len(data)} bytes is shorter than its header")
        (magic, flags, count, pages, pe, mlen, mxxh, node_off, node_len, keys_len, cflag,
         r1, r2) = _ROOT_HEADER.unpack_from(data)
        if magic != ROOT_MAGIC or flags != 0 or r1 or r2 or cflag not in (0, 1):
            raise self._err("bad magic, flags or reserved bytes")
        if not valid_page_entries(pe):
            raise self._err(f"page_entries {pe} is not a power of two in "
                            f"{MIN_PAGE_ENTRIES}..{MAX_PAGE_ENTRIES}")
        if pages != -(-count // pe):
            raise self._err(f"{pages} pages for {count} chunks of {pe} per page")
        expected = _ROOT_HEADER.size + pages * ROOT_DTYPE.itemsize + keys_len
        if expected != len(data):
            raise self._err(f"header declares {expected} bytes but the root has {len(data)}")
        if (node_off == 0) != (node_len == 0):
            raise self._err(f"node member offset {node_off} with length {node_len}")
        self.chunk_count = count
        self.catalog_count = count if cflag else 0
        self.page_count = pages
        self.page_entries = pe
        self.manifest_length = mlen
        self.manifest_xxh3 = mxxh
        self.node_offset = node_off
        self.node_length = node_len
        manifest_end = base + mlen
        if node_len and node_off != manifest_end:
            raise IntegrityError(f"{where}: node member at offset {node_off} does not follow "
                                 f"the manifest ending at {manifest_end}", part="node")
        self._chunk_start = node_off + node_len if node_len else manifest_end
        self._index_offset = index_offset
        self._root = np.frombuffer(data, ROOT_DTYPE, pages, _ROOT_HEADER.size)
        self._keys = bytes(data[_ROOT_HEADER.size + pages * ROOT_DTYPE.itemsize :])
        self._read_page = read_page
        self._cache: OrderedDict[int, _Page] = OrderedDict()
        self.cache_pages = CACHE_PAGES  # pages held, the one being loaded included
        self._loading: dict[int, threading.Event] = {}  # pages a thread is loading
        self._bad: dict[int, IntegrityError] = {}
        self._lock = threading.Lock()
        self._check_root()

    def _err(self, msg: str, page: int | None = None) -> IntegrityError:
        what = "index root" if page is None else f"index page {page}"
        return IntegrityError(f"{self._where}: {what}: {msg}", part="index")

    # -- the root ------------------------------------------------------------------------------

    def _check_root(self) -> None:
        r, n, pe = self._root, self.page_count, self.page_entries
        if n == 0:
            if self._chunk_start != self._index_offset:
                raise self._err(f"no chunks, but members end at {self._chunk_start} and the "
                                f"root starts at {self._index_offset}")
            return
        counts = np.full(n, pe, dtype=np.uint64)
        counts[-1] = self.chunk_count - (n - 1) * pe
        bad = np.flatnonzero((r["first_seq"] != np.arange(n, dtype=np.uint64) * pe)
                             | (r["count"] != counts))
        if bad.size:
            p = int(bad[0])
            raise self._err(f"page {p} starts at seq {int(r['first_seq'][p])} with "
                            f"{int(r['count'][p])} entries; the tiling needs seq {p * pe} "
                            f"with {int(counts[p])}")
        klen = np.uint64(len(self._keys))
        ko = r["keys_off"]
        kbad = (ko > klen) | (r["first_len"] < 1) | (r["last_len"] < 1)
        kbad |= (r["first_len"].astype(np.uint64) + r["last_len"]) > klen - np.minimum(ko, klen)
        if kbad.any():
            raise self._err(f"page {int(np.flatnonzero(kbad)[0])}: keys lie outside the root "
                            "keys blob")
        if (r["records"] < r["count"]).any():
            raise self._err(f"page {int(np.flatnonzero(r['records'] < r['count'])[0])}: "
                            "fewer records than chunks")
        # page members: in order, each after the previous one, the last right before the root
        end = np.uint64(self._index_offset)
        off, length = r["offset"], r["length"]
        obad = (length <= _MEMBER_MIN) | (off > end) | (length > end - np.minimum(off, end))
        if obad.any():
            raise self._err(f"page {int(np.flatnonzero(obad)[0])}: member range lies outside "
                            "the chunk area")
        ends = off + length
        starts_after = np.concatenate(([np.uint64(self._chunk_start)], ends[:-1]))
        obad = off < starts_after
        if obad.any():
            p = int(np.flatnonzero(obad)[0])
            raise self._err(f"page {p}: member at offset {int(off[p])} does not follow the "
                            f"previous member ending at {int(starts_after[p])}")
        if int(ends[-1]) != self._index_offset:
            raise self._err(f"the last page ends at {int(ends[-1])} but the root starts at "
                            f"{self._index_offset}")
        p = _first_unordered(self._keys, r["keys_off"], r["first_len"], r["last_len"])
        if p is not None:
            raise self._err(f"page {p}: key range [{self.page_first_key(p)!r} .. "
                            f"{self.page_last_key(p)!r}] is not after the previous page's")

    def page_first_key(self, p: int) -> bytes:
        e = self._root[p]
        k = int(e["keys_off"])
        return self._keys[k : k + int(e["first_len"])]

    def page_last_key(self, p: int) -> bytes:
        e = self._root[p]
        k = int(e["keys_off"]) + int(e["first_len"])
        return self._keys[k : k + int(e["last_len"])]

    # -- pages ---------------------------------------------------------------------------------

    def sequential(self) -> None:
        """The reader goes through the chunks in order (restore, verify, ls): cache
        SEQUENTIAL_PAGES, not CACHE_PAGES, so its memory does not grow with the page count."""
        self.cache_pages = SEQUENTIAL_PAGES

    def page(self, p: int) -> _Page:
        """Page p, read and checked (cached); IntegrityError when it is damaged. A page is
        loaded by one thread at a time (the others wait for it), after the least recently
        used pages beyond `cache_pages` - 1 are dropped: at most `cache_pages` decoded."""
        while True:
            with self._lock:
                pg = self._cache.get(p)
                if pg is not None:
                    self._cache.move_to_end(p)
                    return pg
                if p in self._bad:
                    raise self._bad[p]
                loading = self._loading.get(p)
                if loading is None:
                    done = self._loading[p] = threading.Event()
                    while self._cache and len(self._cache) >= self.cache_pages:
                        self._cache.popitem(last=False)
                    break
            loading.wait()
        try:
            pg = self._load(p)
            with self._lock:
                self._cache[p] = pg
                while len(self._cache) > self.cache_pages:
                    self._cache.popitem(last=False)
        except IntegrityError as exc:
            exc.part = "index"
            with self._lock:
                self._bad[p] = exc
            raise
        finally:
            with self._lock:
                del self._loading[p]
            done.set()
        return pg

    def _load(self, p: int) -> _Page:
        r = self._root[p]
        data = self._read_page(p, int(r["offset"]), int(r["length"]), int(r["member_xxh3"]))
        if len(data) < _PAGE_HEADER.size:
            raise self._err(f"{len(data)} bytes is shorter than its header", p)
        (magic, flags, number, first_seq, count, keys_len, ccount, r1,
         r2) = _PAGE_HEADER.unpack_from(data)
        if magic != PAGE_MAGIC or flags != 0 or r1 or r2:
            raise self._err("bad magic, flags or reserved bytes", p)
        if (number, first_seq, count) != (p, int(r["first_seq"]), int(r["count"])):
            raise self._err(f"says page {number}, first seq {first_seq}, {count} entries; the "
                            f"root says page {p}, first seq {int(r['first_seq'])}, "
                            f"{int(r['count'])} entries", p)
        if ccount != (count if self.catalog_count else 0):
            raise self._err(f"{ccount} catalog entries for {count} chunks", p)
        tbase = _PAGE_HEADER.size
        cbase = tbase + count * ENTRY_DTYPE.itemsize
        kbase = cbase + ccount * CATALOG_DTYPE.itemsize
        if kbase + keys_len != len(data):
            raise self._err(f"header declares {kbase + keys_len} bytes but the page has "
                            f"{len(data)}", p)
        if not isinstance(data, bytes) and not isinstance(getattr(data, "obj", None), bytes):
            data = bytes(data)  # owned: the arrays below are views of it (bytes never change)
        pg = _Page(np.frombuffer(data, ENTRY_DTYPE, count, tbase),
                   np.frombuffer(data, CATALOG_DTYPE, ccount, cbase), memoryview(data)[kbase:])
        self._check_page(p, pg)
        return pg

    def _check_page(self, p: int, pg: _Page) -> None:
        e, n = pg.entries, len(pg.entries)
        r = self._root[p]
        seqs = np.arange(n, dtype=np.uint64) + r["first_seq"]
        bad = np.flatnonzero(e["seq"] != seqs)
        if bad.size:
            j = int(bad[0])
            raise self._err(f"entry {j} has seq {int(e['seq'][j])}, expected {int(seqs[j])}", p)
        bad = np.flatnonzero(e["flags"] & np.uint32(~KNOWN_FLAGS & 0xFFFFFFFF))
        if bad.size:
            raise self._err(f"chunk {int(seqs[bad[0]])}: unknown flags "
                            f"{int(e['flags'][bad[0]]):#x}", p)
        want = None if self._page_epoch is None else self._page_epoch(p)
        bad = np.flatnonzero(e["reserved"] > MAX_EPOCH if want is None
                             else e["reserved"] != want)
        if bad.size:
            j = int(bad[0])
            raise self._err(f"chunk {int(seqs[j])}: records epoch {int(e['reserved'][j]):#x}"
                            + ("" if want is None else f", the page was sealed under {want}"),
                            p)
        if (e["records"] < 1).any():
            raise self._err(f"chunk {int(seqs[np.flatnonzero(e['records'] < 1)[0]])}: record "
                            "count 0", p)
        if int(e["records"].sum(dtype=np.uint64)) != int(r["records"]):
            raise self._err(f"entries hold {int(e['records'].sum(dtype=np.uint64))} records, "
                            f"the root says {int(r['records'])}", p)
        klen = np.uint64(len(pg.keys))
        ko = e["keys_off"]
        kbad = (ko > klen) | (e["first_len"] < 1) | (e["last_len"] < 1)
        kbad |= (e["first_len"].astype(np.uint64) + e["last_len"]) > klen - np.minimum(ko, klen)
        if kbad.any():
            raise self._err(f"chunk {int(seqs[np.flatnonzero(kbad)[0]])}: keys lie outside "
                            "the keys blob", p)
        if pg.first_key(0) != self.page_first_key(p) or \
                pg.last_key(n - 1) != self.page_last_key(p):
            raise self._err("first or last key disagrees with the root", p)
        j = _first_unordered(pg.keys, e["keys_off"], e["first_len"], e["last_len"])
        if j is not None:
            raise self._err(f"chunk {int(seqs[j])}: key range does not follow the previous "
                            "chunk's (keys must increase strictly)", p)
        self._check_members(p, pg, seqs)

    def _check_members(self, p: int, pg: _Page, seqs: np.ndarray) -> None:
        """The chunk and catalog members of page p (references excluded) tile the file from
        the end of page p-1 (or of the manifest/node member) to page p's own member."""
        e, c = pg.entries, pg.catalogs
        ref = (e["flags"] & FLAG_PARENT) != 0
        if ((e["length"][ref] != 0) | (e["member_xxh3"][ref] != 0)).any():
            j = int(np.flatnonzero(ref & ((e["length"] != 0) | (e["member_xxh3"] != 0)))[0])
            raise self._err(f"chunk {int(seqs[j])}: a parent reference with a member length "
                            "or digest", p)
        if len(c):
            zero = np.zeros(1, CATALOG_DTYPE)[0]
            nz = ref & (c != zero)
            if nz.any():
                raise self._err(f"catalog {int(seqs[np.flatnonzero(nz)[0]])}: a referenced "
                                "chunk's catalog entry is not zero", p)
        stored = ~ref
        chunk_offs = e["offset"][stored]
        if len(c):
            offs = np.concatenate((chunk_offs, c["offset"][stored]))
            lens = np.concatenate((e["length"][stored], c["length"][stored]))
        else:
            offs, lens = chunk_offs, e["length"][stored]
        start = (self._chunk_start if p == 0
                 else int(self._root["offset"][p - 1] + self._root["length"][p - 1]))
        stop = int(self._root["offset"][p])
        if offs.size == 0:
            if start != stop:
                raise self._err(f"no members between {start} and the page at {stop}", p)
            return
        stop64 = np.uint64(stop)
        out = (lens <= _MEMBER_MIN) | (offs > stop64) | (lens > stop64 - np.minimum(offs, stop64))
        if out.any():
            raise self._err(f"a member at offset {int(offs[np.flatnonzero(out)[0]])} lies "
                            "outside the page's part of the file", p)
        if chunk_offs.size > 1 and (np.diff(chunk_offs.astype(np.int64)) <= 0).any():
            raise self._err("chunk members are not in seq order", p)
        order = np.argsort(offs, kind="stable")
        offs, lens = offs[order], lens[order]
        expect = np.concatenate(([np.uint64(start)], offs[:-1] + lens[:-1]))
        bad = np.flatnonzero(offs != expect)
        if bad.size:
            k = int(bad[0])
            raise self._err(f"member at offset {int(offs[k])} does not follow the previous "
                            f"member ending at {int(expect[k])}", p)
        if int(offs[-1] + lens[-1]) != stop:
            raise self._err(f"members end at {int(offs[-1] + lens[-1])} but the page starts "
                            f"at {stop}", p)

    # -- the Index interface ---------------------------------------------------------------------

    def __len__(self) -> int:
        return self.chunk_count

    def _locate(self, i: int) -> tuple[_Page, int]:
        if not 0 <= i < self.chunk_count:
            raise IndexError(f"chunk {i} is not in this archive ({self.chunk_count} chunks)")
        p, j = divmod(i, self.page_entries)
        return self.page(p), j

    def entry(self, i: int) -> ChunkEntry:
        pg, j = self._locate(i)
        return _entry(pg, j)

    def catalog(self, i: int) -> CatalogEntry:
        if not 0 <= i < self.catalog_count:
            raise IndexError(f"archive has no catalog for chunk {i}")
        pg, j = self._locate(i)
        return CatalogEntry(*pg.catalogs[j].tolist())

    def entries(self) -> Iterator[ChunkEntry]:
        """Every entry in seq order, one page in memory at a time."""
        for p in range(self.page_count):
            pg = self.page(p)
            for j in range(len(pg.entries)):
                yield _entry(pg, j)

    def totals(self) -> Iterator[tuple[bytes, int, int, int]]:
        """Per page: (payload XXH3s as little-endian u64 bytes, records, parent references,
        payload bytes)."""
        for t in self.tables():
            yield (t["payload_xxh3"].astype("<u8").tobytes(),
                   int(t["records"].sum(dtype=np.uint64)),
                   int(np.count_nonzero(t["flags"] & FLAG_PARENT)),
                   int(t["payload_len"].sum(dtype=np.uint64)))

    def tables(self) -> Iterator[np.ndarray]:
        """The chunk table page by page, as structured arrays (ENTRY_DTYPE)."""
        for p in range(self.page_count):
            yield self.page(p).entries

    def block(self, i: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(first seq, chunk table, keys blob as uint8) of the page holding chunk i, read and
        checked (IntegrityError when it is damaged)."""
        pg, _ = self._locate(i)
        return (i // self.page_entries * self.page_entries, pg.entries,
                np.frombuffer(pg.keys, np.uint8))

    def blocks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Every page (see block) in seq order."""
        for p in range(self.page_count):
            yield self.block(p * self.page_entries)

    def check_layout(self, manifest_end: int, index_offset: int) -> list[IntegrityError]:
        """Every page read and checked (the root was checked at open): one problem per bad
        page. With the root's checks this is every check of §5 and §11.3."""
        return self.check_pages(range(self.page_count))

    def check_pages(self, pages: range) -> list[IntegrityError]:
        problems: list[IntegrityError] = []
        for p in pages:
            try:
                self.page(p)
            except IntegrityError as exc:
                problems.append(exc)
        return problems

    def layout_problems(self, manifest_end: int, index_offset: int, start: bytes = b"",
                        end: bytes | None = None) -> list[IntegrityError]:
        """What a reader of the keys in [start, end) checks before reading chunks: the pages
        holding them."""
        try:
            chunks = self.chunks_overlapping(start, end)
        except IntegrityError as exc:
            return [exc]
        if not chunks:
            return []
        pe = self.page_entries
        return self.check_pages(range(chunks.start // pe, (chunks.stop - 1) // pe + 1))

    def chunks_overlapping(self, start: bytes, end: bytes | None) -> range:
        """Chunks that may hold keys in [start, end): a binary search over the root, then
        within at most two pages."""
        n, pe = self.page_count, self.page_entries
        p = _first_not_below(self.page_last_key, start, 0, n)
        if p == n:
            return range(self.chunk_count, self.chunk_count)
        pg = self.page(p)
        first = p * pe + _first_not_below(lambda j: pg.last_key(j), start, 0, len(pg.entries))
        if end is None:
            return range(first, self.chunk_count)
        q = _first_not_below(self.page_first_key, end, 0, n) - 1  # last page starting < end
        if q < p:
            return range(first, first)
        qg = self.page(q)
        stop = q * pe + _first_not_below(lambda j: qg.first_key(j), end, 0, len(qg.entries))
        return range(first, max(first, stop))


def page_entries_of(data: bytes | memoryview) -> list[ChunkEntry]:
    """The chunk entries of one index page's data, unchecked beyond its sizes (a resumed
    incremental's rescan rebuilds the page from them and compares it byte for byte, and
    checks each reference against the parent, docs/FORMAT.md §11.5); IntegrityError when the
    data is not shaped as a page."""
    if len(data) < _PAGE_HEADER.size:
        raise IntegrityError("an index page shorter than its header")
    magic, _, _, _, count, keys_len, ccount, _, _ = _PAGE_HEADER.unpack_from(data)
    tbase = _PAGE_HEADER.size
    kbase = tbase + count * ENTRY_DTYPE.itemsize + ccount * CATALOG_DTYPE.itemsize
    if magic != PAGE_MAGIC or count > MAX_PAGE_ENTRIES or kbase + keys_len != len(data):
        raise IntegrityError("not an index page")
    data = bytes(data)
    pg = _Page(np.frombuffer(data, ENTRY_DTYPE, count, tbase), np.empty(0, CATALOG_DTYPE),
               data[kbase:])
    out = [_entry(pg, j) for j in range(count)]
    if any(e.first_key is None or len(e.first_key) + len(e.last_key) > keys_len for e in out):
        raise IntegrityError("an index page's keys lie outside it")
    return out


def _entry(pg: _Page, j: int) -> ChunkEntry:
    (seq, off, length, plen, recs, pxxh, mxxh, kxxh, koff, flen, llen, flags,
     epoch) = pg.entries[j].tolist()
    return ChunkEntry(seq, off, length, plen, recs, pxxh, mxxh, kxxh,
                      bytes(pg.keys[koff : koff + flen]),
                      bytes(pg.keys[koff + flen : koff + flen + llen]),
                      flags, epoch)


_PAD_LIMIT = 256  # longest key compared as a padded array; longer pages are compared in Python
_BLOCK_ROWS = 4096  # rows compared at once


def _first_unordered(keys: bytes | memoryview, offs: np.ndarray, flen: np.ndarray,
                     llen: np.ndarray,
                     ) -> int | None:
    """The first j whose first key (keys[offs[j]:+flen[j]]) > its last key (right after it),
    or whose first key <= the previous last key; None when the key ranges increase strictly.
    Compared as zero-padded arrays (no Python object per key) unless a key is long."""
    n = len(offs)
    flen = flen.astype(np.int64)
    llen = llen.astype(np.int64)
    fo = offs.astype(np.int64)
    width = int(max(flen.max(), llen.max())) if n else 0
    if width > _PAD_LIMIT:
        prev = None
        for j in range(n):
            f = bytes(keys[fo[j] : fo[j] + flen[j]])
            last = bytes(keys[fo[j] + flen[j] : fo[j] + flen[j] + llen[j]])
            if f > last or (prev is not None and f <= prev):
                return j
            prev = last
        return None
    blob = np.frombuffer(keys, np.uint8)
    if n and (flen == width).all() and (llen == width).all() and \
            (fo == fo[0] + 2 * width * np.arange(n)).all():
        return _first_unordered_fixed(blob[fo[0]:fo[0] + 2 * width * n], n, width)
    for lo in range(0, n, _BLOCK_ROWS):  # bounded temporaries for a root of many pages
        hi = min(n, lo + _BLOCK_ROWS)
        b = max(0, lo - 1)  # the previous row, for the comparison across the block's start
        first = _padded(blob, fo[b:hi], flen[b:hi], width)
        last = _padded(blob, fo[b:hi] + flen[b:hi], llen[b:hi], width)
        # first[j] <= last[j]; last[j-1] < first[j]
        bad = _compare(first, flen[b:hi], last, llen[b:hi]) > 0
        if hi - b > 1:
            bad[1:] |= _compare(last[:-1], llen[b : hi - 1], first[1:], flen[b + 1 : hi]) >= 0
        hits = np.flatnonzero(bad)
        if hits.size:
            return b + int(hits[0])
    return None


def _first_unordered_fixed(blob: np.ndarray, n: int, width: int) -> int | None:
    """_first_unordered where every key is `width` bytes and the keys lie first, last, first,
    last... in `blob`: compared in place as fixed-width bytes (same length: numpy's order is
    the bytewise one)."""
    k = blob.view(f"S{width}")  # first0, last0, first1, last1, ...
    first, last = k[0::2], k[1::2]
    bad = first > last
    bad[1:] |= last[:-1] >= first[1:]
    hits = np.flatnonzero(bad)
    return int(hits[0]) if hits.size else None


def _padded(blob: np.ndarray, offs: np.ndarray, lens: np.ndarray, width: int) -> np.ndarray:
    """Keys blob[offs[j]:offs[j]+lens[j]], zero-padded to `width`, as fixed-width bytes."""
    cols = np.arange(width, dtype=np.int64)
    idx = offs[:, None] + cols[None, :]
    np.minimum(idx, len(blob) - 1, out=idx)  # past a key's end: masked below
    rows = np.where(cols[None, :] < lens[:, None], blob[idx], np.uint8(0))
    return np.ascontiguousarray(rows, dtype=np.uint8).view(f"S{width}").ravel()


def _compare(a: np.ndarray, alen: np.ndarray, b: np.ndarray, blen: np.ndarray) -> np.ndarray:
    """Row-wise bytewise comparison of zero-padded keys: -1, 0 or 1. numpy orders fixed-width
    bytes as zero-padded strings; a zero pad sorts a key before any longer key it prefixes, and
    keys equal once padded (`a`, `a\\0`) are ordered by length."""
    return np.where(a > b, 1, np.where(a < b, -1, np.sign(alen - blen)))
