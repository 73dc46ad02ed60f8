"""The paged index (docs/FORMAT.md §11.3): index pages written as the backup runs and a small
root on top, so that opening an archive of tens of millions of chunks reads the root only and
a key-range lookup reads O(log n + k) entries.

This module writes them (PagedIndexBuilder) and holds the layout and the policy of when an
archive is paged; dsbackup.archive.pagedindex reads them (numpy, imported only by a reader of
a paged archive)."""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

from dsbackup.archive.index import (
    CATALOG_ENTRY_SIZE,
    CatalogEntry,
    ChunkEntry,
    append_chunk_entry,
    catalog_entry_bytes,
    reference_entries,
)
from dsbackup.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

PAGE_MAGIC = b"DSP1"
ROOT_MAGIC = b"DSR1"
DEFAULT_PAGE_ENTRIES = 4096
MIN_PAGE_ENTRIES = 256
MAX_PAGE_ENTRIES = 65536
CACHE_PAGES = 4  # decoded pages kept (a page of 4096 entries is ~0.85 MB): random lookups
# restore, verify and ls read chunks in order (their threads a few chunks apart): the page in
# use and the next one; more would only make their memory grow with the archive's page count
SEQUENTIAL_PAGES = 2

# magic, flags, page number, first seq, entry count, keys blob length, catalog count, reserved
_PAGE_HEADER = struct.Struct("<4sIQQQQQQQ")  # 64 bytes
# magic, flags, chunks, pages, page_entries, manifest length, manifest XXH3, node offset,
# node length, root keys length, catalog flag, reserved x2
_ROOT_HEADER = struct.Struct("<4sIQQQQQQQQQQQ")  # 96 bytes
_ROOT_ENTRY = struct.Struct("<QQQQQQIIQ")  # 64 bytes

_MEMBER_MIN = 16  # a member is longer than its gzip header (fmt.SUBFIELD_OFFSET)


PAGED_MODES = ("auto", "always", "never")
# tests: a smaller page (a power of two, 256..65536) so that a few hundred chunks span pages
PAGE_ENTRIES_ENV = "DSBACKUP_TEST_PAGE_ENTRIES"


def valid_page_entries(n: int) -> bool:
    return MIN_PAGE_ENTRIES <= n <= MAX_PAGE_ENTRIES and n & (n - 1) == 0


def default_page_entries() -> int:
    raw = os.environ.get(PAGE_ENTRIES_ENV)
    if raw is None:
        return DEFAULT_PAGE_ENTRIES
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not valid_page_entries(n):
        raise ConfigError(f"{PAGE_ENTRIES_ENV}={raw!r} is not a power of two in "
                          f"{MIN_PAGE_ENTRIES}..{MAX_PAGE_ENTRIES}")
    return n


def expected_chunks(approx_records: int | None, approx_bytes: int | None, chunk_size: int,
                    chunk_max_bytes: int) -> float | None:
    """A store's expected chunk count from its estimates (None when it gives none): records
    over the mean records per chunk, at least its bytes over the largest chunk."""
    if not approx_records and not approx_bytes:
        return None
    return max((approx_records or 0) / max(1, chunk_size),
               (approx_bytes or 0) / max(1, chunk_max_bytes))


def page_entries_after(mode: str, index: object) -> int | None:
    """choose_page_entries for an archive made from another one (an incremental of a parent,
    a consolidated copy) whose `index` gives the exact count: a paged source keeps its page
    size."""
    if getattr(index, "paged", False) and mode == "auto":
        return int(index.page_entries)  # type: ignore[attr-defined]
    return choose_page_entries(mode, len(index))  # type: ignore[arg-type]


def choose_page_entries(mode: str, expected_chunks: float | None,
                        page_entries: int | None = None) -> int | None:
    """Whether an archive gets a paged index (docs/FORMAT.md §11.3), decided before its first
    member (every member's subfield carries the flag): the page size, or None for the
    version-1 single index. ``auto``: paged when more than one page of chunks is expected
    (the store's estimate for a full backup, the parent's or source's exact count for an
    incremental or consolidated archive); an unknown estimate gives the single index.
    ``always``/``never`` force it."""
    if mode not in PAGED_MODES:
        raise ConfigError(f"paged_index must be one of {', '.join(PAGED_MODES)}, got {mode!r}")
    if mode == "never":
        return None
    pe = page_entries or default_page_entries()
    if mode == "always":
        return pe
    return pe if expected_chunks is not None and expected_chunks > pe else None


# -- writing ----------------------------------------------------------------------------------


class PagedIndexBuilder:
    """The writer's side: the current page and the root only (memory does not grow with the
    archive beyond 64 bytes and two keys per page). Same interface as IndexBuilder, plus
    ``page_ready``/``take_page``/``page_written`` for the writer to emit pages."""

    paged = True

    def __init__(self, page_entries: int = DEFAULT_PAGE_ENTRIES) -> None:
        if not valid_page_entries(page_entries):
            raise ValueError(f"page_entries {page_entries} is not a power of two in "
                             f"{MIN_PAGE_ENTRIES}..{MAX_PAGE_ENTRIES}")
        self.page_entries = page_entries
        self.count = 0  # chunks, all pages
        self.catalog_count = 0
        self.pages = 0
        self._table = bytearray()
        self._catalog = bytearray()
        self._keys = bytearray()
        self._in_page = 0
        self._page_catalogs = 0
        self._page_records = 0
        self._page_first: bytes = b""
        self._page_last: bytes = b""
        self._root = bytearray()
        self._root_keys = bytearray()

    def add_chunk(self, e: ChunkEntry) -> None:
        if e.seq != self.count:
            raise ValueError(f"chunk seq {e.seq} added out of order (expected {self.count})")
        if self._in_page == self.page_entries:
            raise ValueError("the full index page was not taken before the next chunk")
        append_chunk_entry(self._table, self._keys, e)
        if not self._in_page:
            self._page_first = bytes(e.first_key)
        self._page_last = bytes(e.last_key)
        self._page_records += e.records
        self._in_page += 1
        self.count += 1

    def add_catalog(self, c: CatalogEntry) -> None:
        self._catalog += catalog_entry_bytes(c)
        self._page_catalogs += 1
        self.catalog_count += 1

    def room(self) -> int:
        """Chunks the current page still takes."""
        return self.page_entries - self._in_page

    def add_references(self, parent: np.ndarray, parent_keys: np.ndarray,
                       first_parent_seq: int, epoch: int, catalog: bool) -> None:
        """add_chunk (and add_catalog of a zero entry) for references to consecutive parent
        chunks at once, at most room() of them (see reference_entries)."""
        n = len(parent)
        if not n:
            return
        if n > self.room():
            raise ValueError(f"{n} references do not fit the page's {self.room()} places")
        keys_at = len(self._keys)
        table, keys = reference_entries(parent, parent_keys, self.count, first_parent_seq,
                                        keys_at, epoch)
        self._table += table
        self._keys += keys
        import numpy as np

        f0, ll = int(parent["first_len"][0]), int(parent["last_len"][-1])
        if not self._in_page:
            self._page_first = bytes(self._keys[keys_at:keys_at + f0])
        self._page_last = bytes(self._keys[len(self._keys) - ll:])
        self._page_records += int(parent["records"].sum(dtype=np.uint64))
        self._in_page += n
        self.count += n
        if catalog:
            self._catalog += bytes(CATALOG_ENTRY_SIZE * n)
            self._page_catalogs += n
            self.catalog_count += n

    def page_ready(self, final: bool = False) -> bool:
        """A page is due: full (and its last chunk's catalog added, if any), or at the end."""
        if final:
            return self._in_page > 0
        return self._in_page == self.page_entries and self._page_catalogs in (0, self._in_page)

    def take_page(self) -> tuple[int, bytes]:
        """(page number, data) of the current page; the writer writes it, then calls
        page_written with where it went."""
        if self._page_catalogs not in (0, self._in_page):
            raise ValueError("a catalog needs one entry per chunk")
        first_seq = self.count - self._in_page
        header = _PAGE_HEADER.pack(PAGE_MAGIC, 0, self.pages, first_seq, self._in_page,
                                   len(self._keys), self._page_catalogs, 0, 0)
        return self.pages, b"".join((header, self._table, self._catalog, self._keys))

    def page_written(self, offset: int, length: int, member_xxh3: int) -> None:
        first_seq = self.count - self._in_page
        self._root += _ROOT_ENTRY.pack(offset, length, member_xxh3, first_seq, self._in_page,
                                       len(self._root_keys), len(self._page_first),
                                       len(self._page_last), self._page_records)
        self._root_keys += self._page_first
        self._root_keys += self._page_last
        self.pages += 1
        self._table = bytearray()
        self._catalog = bytearray()
        self._keys = bytearray()
        self._in_page = self._page_catalogs = self._page_records = 0

    def drop_page(self) -> None:
        """Forget the chunks added since the last page was written (a resumed backup cuts
        its file after that page, docs/FORMAT.md §11.5)."""
        self.count -= self._in_page
        self.catalog_count -= self._page_catalogs
        self._table = bytearray()
        self._catalog = bytearray()
        self._keys = bytearray()
        self._in_page = self._page_catalogs = self._page_records = 0

    def encode(self, manifest_length: int, manifest_xxh3: int, node_offset: int = 0,
               node_length: int = 0) -> bytes:
        """The root (after every page was written)."""
        if self._in_page:
            raise ValueError("the last index page was not written before the root")
        if self.catalog_count not in (0, self.count):
            raise ValueError("a catalog needs one entry per chunk")
        header = _ROOT_HEADER.pack(
            ROOT_MAGIC, 0, self.count, self.pages, self.page_entries, manifest_length,
            manifest_xxh3, node_offset, node_length, len(self._root_keys),
            1 if self.catalog_count else 0, 0, 0)
        return b"".join((header, self._root, self._root_keys))


# -- reading ----------------------------------------------------------------------------------
