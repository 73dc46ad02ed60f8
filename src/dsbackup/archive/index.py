"""The chunk index (docs/FORMAT.md §5): encoding while writing, lazy decoding when reading."""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from dsbackup._plain import Frozen
from dsbackup.errors import IntegrityError

if TYPE_CHECKING:
    import numpy as np

INDEX_MAGIC = b"DSI1"
# 64 bytes; the last 16 (reserved in version 1) locate the node member in version 2 (§11.2)
_HEADER = struct.Struct("<4sIQQQQQQQ")
_ENTRY = struct.Struct("<QQQQQQQQQIIII")  # 88 bytes
_CATALOG = struct.Struct("<QQQQQ")  # 40 bytes
# Entry flag bit 0: the chunk is stored in the parent chain, not in this archive (docs/FORMAT.md
# §10); ``offset`` is then the chunk's seq in the parent's index and ``length`` is 0.
FLAG_PARENT = 1
KNOWN_FLAGS = FLAG_PARENT
MAX_EPOCH = (1 << 24) - 1  # the low 24 bits of the entry's u32 at offset 84 (§11.4)
HEADER_SIZE = _HEADER.size
ENTRY_SIZE = _ENTRY.size
CATALOG_ENTRY_SIZE = _CATALOG.size
# the same tables as numpy structured arrays (decoded without a Python object per entry):
# ENTRY_DTYPE and CATALOG_DTYPE, made on first use (module __getattr__) so that a command that
# never decodes a table as arrays does not pay numpy's import (~0.1 s of start-up here)
_DTYPES: dict[str, Any] = {}


def _make_dtypes() -> None:
    import numpy as np

    entry = np.dtype([
        ("seq", "<u8"), ("offset", "<u8"), ("length", "<u8"), ("payload_len", "<u8"),
        ("records", "<u8"), ("payload_xxh3", "<u8"), ("member_xxh3", "<u8"),
        ("keys_xxh3", "<u8"), ("keys_off", "<u8"), ("first_len", "<u4"), ("last_len", "<u4"),
        ("flags", "<u4"), ("reserved", "<u4"),
    ])
    catalog = np.dtype([("offset", "<u8"), ("length", "<u8"), ("member_xxh3", "<u8"),
                        ("data_len", "<u8"), ("data_xxh3", "<u8")])
    assert entry.itemsize == ENTRY_SIZE and catalog.itemsize == CATALOG_ENTRY_SIZE
    _DTYPES.update(ENTRY_DTYPE=entry, CATALOG_DTYPE=catalog)


def __getattr__(name: str) -> Any:
    if name in ("ENTRY_DTYPE", "CATALOG_DTYPE"):
        if not _DTYPES:
            _make_dtypes()
        return _DTYPES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ChunkEntry(Frozen):
    """A chunk's index entry (§5). `epoch`, the entry's u32 at offset 84: in an encrypted
    archive the epoch the chunk and its catalog were sealed under (low 24 bits;
    docs/FORMAT.md §11.4), else 0."""

    __slots__ = ("seq", "offset", "length", "payload_len", "records", "payload_xxh3",
                 "member_xxh3", "keys_xxh3", "first_key", "last_key", "flags", "epoch")
    seq: int
    offset: int
    length: int
    payload_len: int
    records: int
    payload_xxh3: int
    member_xxh3: int
    keys_xxh3: int
    first_key: bytes
    last_key: bytes
    flags: int
    epoch: int

    def __init__(self, seq: int, offset: int, length: int, payload_len: int, records: int,
                 payload_xxh3: int, member_xxh3: int, keys_xxh3: int, first_key: bytes,
                 last_key: bytes, flags: int = 0, epoch: int = 0) -> None:
        self._set(seq, offset, length, payload_len, records, payload_xxh3, member_xxh3,
                  keys_xxh3, first_key, last_key, flags, epoch)

    @property
    def in_parent(self) -> bool:
        """True when the chunk is stored in the parent chain (a reference)."""
        return bool(self.flags & FLAG_PARENT)

    @property
    def key_range(self) -> str:
        return f"[{self.first_key!r} .. {self.last_key!r}]"


class CatalogEntry(Frozen):
    __slots__ = ("offset", "length", "member_xxh3", "data_len", "data_xxh3")
    offset: int
    length: int
    member_xxh3: int
    data_len: int
    data_xxh3: int

    def __init__(self, offset: int, length: int, member_xxh3: int, data_len: int,
                 data_xxh3: int) -> None:
        self._set(offset, length, member_xxh3, data_len, data_xxh3)


def append_chunk_entry(table: bytearray, keys: bytearray, e: ChunkEntry) -> None:
    """Append chunk entry `e` to an index table (§5), its first and last keys to the keys
    blob the entry points into (at the blob's current end)."""
    table += _ENTRY.pack(
        e.seq, e.offset, e.length, e.payload_len, e.records, e.payload_xxh3,
        e.member_xxh3, e.keys_xxh3, len(keys), len(e.first_key), len(e.last_key),
        e.flags, e.epoch,
    )
    keys += e.first_key
    keys += e.last_key


def reference_entries(parent: np.ndarray, parent_keys: np.ndarray, first_seq: int,
                      first_parent_seq: int, keys_at: int, epoch: int) -> tuple[bytes, bytes]:
    """The index entries (§5, as append_chunk_entry writes them) of references to consecutive
    parent chunks: `parent` their entries (ENTRY_DTYPE, seqs `first_parent_seq`...),
    `parent_keys` the keys blob they point into (in bounds: a checked index block). Seqs from
    `first_seq`, keys from offset `keys_at` of the keys blob: (table bytes, keys bytes)."""
    import numpy as np

    n = len(parent)
    t = np.zeros(n, __getattr__("ENTRY_DTYPE"))
    t["seq"] = np.arange(first_seq, first_seq + n, dtype=np.uint64)
    t["offset"] = np.arange(first_parent_seq, first_parent_seq + n, dtype=np.uint64)
    for f in ("payload_len", "records", "payload_xxh3", "keys_xxh3", "first_len", "last_len"):
        t[f] = parent[f]
    lens = parent["first_len"].astype(np.int64) + parent["last_len"]
    starts = np.cumsum(lens) - lens
    t["keys_off"] = starts + keys_at
    t["flags"] = FLAG_PARENT
    t["reserved"] = epoch
    offs = parent["keys_off"].astype(np.int64)
    if n and (offs[1:] == offs[:-1] + lens[:-1]).all():  # one after another, as written
        keys = parent_keys[offs[0]:offs[0] + int(lens.sum())]
    else:
        keys = parent_keys[np.repeat(offs - starts, lens) + np.arange(int(lens.sum()))]
    return t.tobytes(), keys.tobytes()


def catalog_entry_bytes(c: CatalogEntry) -> bytes:
    """Catalog entry `c` as the index stores it (§5)."""
    return _CATALOG.pack(c.offset, c.length, c.member_xxh3, c.data_len, c.data_xxh3)


class IndexBuilder:
    """Accumulates index entries compactly (bytes, not objects) while an archive is written."""

    paged = False

    def __init__(self) -> None:
        self._table = bytearray()
        self._catalog = bytearray()
        self._keys = bytearray()
        self.count = 0
        self.catalog_count = 0

    def add_chunk(self, e: ChunkEntry) -> None:
        if e.seq != self.count:
            raise ValueError(f"chunk seq {e.seq} added out of order (expected {self.count})")
        append_chunk_entry(self._table, self._keys, e)
        self.count += 1

    def add_catalog(self, c: CatalogEntry) -> None:
        self._catalog += catalog_entry_bytes(c)
        self.catalog_count += 1

    def add_references(self, parent: np.ndarray, parent_keys: np.ndarray,
                       first_parent_seq: int, epoch: int, catalog: bool) -> None:
        """add_chunk (and add_catalog of a zero entry) for references to consecutive parent
        chunks at once (see reference_entries)."""
        table, keys = reference_entries(parent, parent_keys, self.count, first_parent_seq,
                                        len(self._keys), epoch)
        self._table += table
        self._keys += keys
        self.count += len(parent)
        if catalog:
            self._catalog += bytes(CATALOG_ENTRY_SIZE * len(parent))
            self.catalog_count += len(parent)

    def encode(self, manifest_length: int, manifest_xxh3: int, node_offset: int = 0,
               node_length: int = 0) -> bytes:
        if self.catalog_count not in (0, self.count):
            raise ValueError("a catalog needs one entry per chunk")
        header = _HEADER.pack(
            INDEX_MAGIC, 0, self.count, len(self._keys), manifest_length, manifest_xxh3,
            self.catalog_count, node_offset, node_length,
        )
        return b"".join((header, self._table, self._catalog, self._keys))


class Index:
    """A decoded index. Entries are decoded on access; every offset is bounds-checked."""

    paged = False

    def __init__(self, data: bytes | memoryview, version: int = 1) -> None:
        if len(data) < HEADER_SIZE:
            raise IntegrityError(f"index: {len(data)} bytes is shorter than its header",
                                 part="index")
        (magic, flags, count, keys_len, mlen, mxxh, ccount, node_off,
         node_len) = _HEADER.unpack_from(data)
        if magic != INDEX_MAGIC or flags != 0 or (version == 1 and (node_off or node_len)):
            raise IntegrityError("index: bad magic, flags or reserved bytes", part="index")
        if (node_off == 0) != (node_len == 0):
            raise IntegrityError(f"index: node member offset {node_off} with length "
                                 f"{node_len}", part="index")
        if ccount not in (0, count):
            raise IntegrityError(f"index: {ccount} catalog entries for {count} chunks",
                                 part="index")
        expected = HEADER_SIZE + count * ENTRY_SIZE + ccount * CATALOG_ENTRY_SIZE + keys_len
        if expected != len(data):
            raise IntegrityError(
                f"index: header declares {expected} bytes but the index has {len(data)}",
                part="index",
            )
        self._data = data
        self.chunk_count = count
        self.catalog_count = ccount
        self.manifest_length = mlen
        self.manifest_xxh3 = mxxh
        self.node_offset = node_off  # 0: no node member
        self.node_length = node_len
        self._catalog_base = HEADER_SIZE + count * ENTRY_SIZE
        self._keys_base = self._catalog_base + ccount * CATALOG_ENTRY_SIZE
        self._keys_len = keys_len
        self._entries: list[ChunkEntry] | None = None
        self._block_checked = False

    def __len__(self) -> int:
        return self.chunk_count

    def sequential(self) -> None:
        """As PagedIndex.sequential: nothing to do, a flat index is decoded whole."""

    def entry(self, i: int) -> ChunkEntry:
        if not 0 <= i < self.chunk_count:
            raise IndexError(f"chunk {i} is not in this archive ({self.chunk_count} chunks)")
        if self._entries is not None:
            return self._entries[i]
        return self._decode(i)

    def _decode(self, i: int) -> ChunkEntry:
        (seq, off, length, plen, recs, pxxh, mxxh, kxxh, koff, flen, llen, flags,
         epoch) = _ENTRY.unpack_from(self._data, HEADER_SIZE + i * ENTRY_SIZE)
        if koff + flen + llen > self._keys_len:
            raise IntegrityError(f"index: chunk {i} keys lie outside the keys blob",
                                 chunk=i, part="index")
        k = self._keys_base + koff
        return ChunkEntry(seq, off, length, plen, recs, pxxh, mxxh, kxxh,
                          bytes(self._data[k : k + flen]),
                          bytes(self._data[k + flen : k + flen + llen]), flags, epoch)

    def entries(self) -> list[ChunkEntry]:
        if self._entries is None:
            self._entries = [self._decode(i) for i in range(self.chunk_count)]
        return self._entries

    def totals(self) -> Iterator[tuple[bytes, int, int, int]]:
        """(payload XXH3s as little-endian u64 bytes, records, parent references, payload
        bytes) of the chunk table — what the summary check and verify's reference count need —
        read through strided memoryviews of the table (no numpy import, no Python object per
        entry)."""
        n = self.chunk_count
        if n == 0:
            return
        if sys.byteorder != "little":  # the table is little-endian; decode it as arrays
            for t in self.tables():
                yield (t["payload_xxh3"].astype("<u8").tobytes(), int(t["records"].sum()),
                       int((t["flags"] & FLAG_PARENT).astype(bool).sum()),
                       int(t["payload_len"].sum()))
            return
        u64, u32 = self._fields()
        w64, w32 = ENTRY_SIZE // 8, ENTRY_SIZE // 4
        # fields as §5: payload length u64 3, records u64 4, payload_xxh3 u64 5, flags u32 20
        yield (u64[5::w64].tobytes(), sum(u64[4::w64]),
               sum(map(FLAG_PARENT.__and__, u32[20::w32])), sum(u64[3::w64]))

    def _fields(self) -> tuple[memoryview, memoryview]:
        """The chunk table as u64 and u32 words (native order: little-endian machines)."""
        table = memoryview(self._data)[HEADER_SIZE:HEADER_SIZE + self.chunk_count * ENTRY_SIZE]
        return table.cast("Q"), table.cast("I")

    def reference_seqs(self) -> list[int]:
        """The seqs of the parent references (§10.2), in order, without decoding entries."""
        if sys.byteorder != "little" or not self.chunk_count:
            return [e.seq for e in self.entries() if e.in_parent]
        flags = self._fields()[1][20::ENTRY_SIZE // 4]
        return [i for i, f in enumerate(flags) if f & FLAG_PARENT]

    def tables(self) -> Iterator[np.ndarray]:
        """The chunk table as one structured array (ENTRY_DTYPE), like PagedIndex.tables."""
        import numpy as np

        yield np.frombuffer(self._data, __getattr__("ENTRY_DTYPE"), self.chunk_count,
                            HEADER_SIZE)

    def block(self, i: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(first seq, chunk table, keys blob as uint8) of the part of the index holding chunk
        i, like PagedIndex.block: here the whole index, its keys checked (_check_block)."""
        import numpy as np

        if not 0 <= i < self.chunk_count:
            raise IndexError(f"chunk {i} is not in this archive ({self.chunk_count} chunks)")
        table = next(self.tables())
        keys = np.frombuffer(self._data, np.uint8, self._keys_len, self._keys_base)
        if not self._block_checked:
            self._check_block(table, keys)
        return 0, table, keys

    def _check_block(self, table: np.ndarray, keys: np.ndarray) -> None:
        """What a reader of the table as a block relies on, as PagedIndex checks a page: keys
        in bounds, key ranges increasing strictly (IntegrityError)."""
        import numpy as np

        klen = np.uint64(keys.size)
        ko, fl, ll = table["keys_off"], table["first_len"], table["last_len"]
        out = (ko > klen) | (fl.astype(np.uint64) + ll > klen - np.minimum(ko, klen))
        if out.any():
            i = int(np.flatnonzero(out)[0])
            raise IntegrityError(f"index: chunk {i} keys lie outside the keys blob", chunk=i,
                                 part="index")
        blob, prev = keys.tobytes(), None  # a single index is small: once, in Python
        for i, (o, f, n) in enumerate(zip(ko.tolist(), fl.tolist(), ll.tolist())):
            first, last = blob[o:o + f], blob[o + f:o + f + n]
            if first > last or (prev is not None and first <= prev):
                raise IntegrityError(f"index: chunk {i}: key range does not follow the "
                                     "previous chunk's (keys must increase strictly)",
                                     chunk=i, part="index")
            prev = last
        self._block_checked = True

    def blocks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Every block (see block) in seq order."""
        if self.chunk_count:
            yield self.block(0)

    def layout_problems(self, manifest_end: int, index_offset: int, start: bytes = b"",
                        end: bytes | None = None) -> list[IntegrityError]:
        """What a reader checks before reading chunks: the whole layout (the range is for
        PagedIndex, which checks only the pages holding it)."""
        return self.check_layout(manifest_end, index_offset)

    def catalog(self, i: int) -> CatalogEntry:
        if not 0 <= i < self.catalog_count:
            raise IndexError(f"archive has no catalog for chunk {i}")
        return CatalogEntry(*_CATALOG.unpack_from(self._data,
                                                  self._catalog_base + i * CATALOG_ENTRY_SIZE))

    def check_layout(self, manifest_end: int, index_offset: int) -> list[IntegrityError]:
        """Structural checks: seq order, members tiling the file, keys increasing."""
        problems: list[IntegrityError] = []
        members: list[tuple[int, int, str, int]] = []
        prev_last: bytes | None = None
        for i, e in enumerate(self.entries()):
            if e.seq != i:
                problems.append(IntegrityError(f"index: entry {i} has seq {e.seq}", chunk=i))
            if e.flags & ~KNOWN_FLAGS:
                problems.append(IntegrityError(f"chunk {i}: unknown flags {e.flags:#x}", chunk=i))
            if e.epoch > MAX_EPOCH:
                problems.append(IntegrityError(f"chunk {i}: reserved bits {e.epoch:#x} set",
                                               chunk=i))
            if not e.first_key or e.first_key > e.last_key or e.records < 1:
                problems.append(IntegrityError(f"chunk {i}: invalid key range or record count",
                                               chunk=i))
            if prev_last is not None and e.first_key <= prev_last:
                problems.append(IntegrityError(
                    f"chunk {i}: first key {e.first_key!r} does not follow the previous "
                    f"chunk's last key", chunk=i))
            prev_last = e.last_key
            if e.in_parent:
                if e.length != 0 or e.member_xxh3 != 0:
                    problems.append(IntegrityError(
                        f"chunk {i}: a parent reference with a member length or digest",
                        chunk=i))
                continue
            members.append((e.offset, e.length, "chunk", i))
        for i in range(self.catalog_count):
            c = self.catalog(i)
            if self.entry(i).in_parent:
                if c != CatalogEntry(0, 0, 0, 0, 0):
                    problems.append(IntegrityError(
                        f"catalog {i}: a referenced chunk's catalog entry is not zero", chunk=i))
                continue
            members.append((c.offset, c.length, "catalog", i))
        if self.node_length:  # right after the manifest, before the first chunk (§11.2)
            if self.node_offset != manifest_end:
                problems.append(IntegrityError(
                    f"node member at offset {self.node_offset} does not follow the manifest "
                    f"ending at {manifest_end}", part="node"))
            members.append((self.node_offset, self.node_length, "node", 0))
        members.sort()
        pos = manifest_end
        for off, length, kind, i in members:
            if off != pos or length <= 0:
                label = "node" if kind == "node" else f"{kind} {i}"
                how = "overlaps" if off < pos else "does not follow"
                problems.append(IntegrityError(
                    f"{label}: member at offset {off} (length {length}) {how} the "
                    f"previous member ending at {pos}", chunk=None if kind == "node" else i,
                    part="node" if kind == "node" else None))
            pos = max(pos, off + length)
        if pos != index_offset:
            problems.append(IntegrityError(
                f"index: members end at {pos} but the index starts at {index_offset}",
                part="index"))
        return problems

    def _last_key(self, i: int) -> bytes:
        return self.entry(i).last_key

    def _first_key(self, i: int) -> bytes:
        return self.entry(i).first_key

    def chunks_overlapping(self, start: bytes, end: bytes | None) -> range:
        """Chunks that may hold keys in [start, end): a binary search over the key ranges
        that decodes O(log n) entries."""
        n = self.chunk_count
        first = _first_not_below(self._last_key, start, 0, n)
        if end is None:
            return range(first, n)
        return range(first, _first_not_below(self._first_key, end, first, n))


def _first_not_below(key_of: Callable[[int], bytes], target: bytes, lo: int, hi: int) -> int:
    """The first i in [lo, hi) with key_of(i) >= target (hi if none); key_of is sorted."""
    while lo < hi:
        mid = (lo + hi) // 2
        if key_of(mid) < target:
            lo = mid + 1
        else:
            hi = mid
    return lo
