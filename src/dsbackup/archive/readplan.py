"""Telling an archive's sources which members a restore, verify or `ls` is about to read,
in order (``ArchiveReader.plan_reads``): an S3 archive then fetches exactly those byte ranges,
adjacent ones coalesced, instead of 8 MiB blocks and their read-ahead (docs/STORAGE.md
"Reading"); a local file has no use for it and never pulls the ranges.

The top archive is told the members it stores itself; each parent of an incremental is told
the members it holds for the chunks read (located through the chain), so a restore of an
incremental downloads the parents' referenced chunks, not the parents. The ranges are
generated lazily, as the source fetches ahead: O(1) memory at any chunk count.
"""

from __future__ import annotations

from collections.abc import Iterator

from dsbackup.archive.chain import ParentChain
from dsbackup.archive.reader import ArchiveReader
from dsbackup.errors import DsBackupError


def plan_chunk_reads(reader: ArchiveReader, chunks: range, *, members: bool = True,
                     catalogs: bool = False, parents: bool = True) -> None:
    """Plan the reads of `chunks` (in order): each one's chunk member (`members`) and its
    catalog member (`catalogs`, where it has one), on the archive and (`parents`) on every
    parent."""
    reader.plan_reads(own_ranges(reader, chunks, members, catalogs))
    chain = reader.parents_opened if parents else None
    for holder in chain.levels if chain is not None else ():
        holder.plan_reads(held_ranges(reader, chain, holder, chunks, members, catalogs))


def own_ranges(reader: ArchiveReader, chunks: range, members: bool, catalogs: bool,
               ) -> Iterator[tuple[int, int]]:
    """(offset, length) of the members of `chunks` stored in the archive itself, in file
    order (a catalog right after its chunk, docs/FORMAT.md §8)."""
    with_catalog = catalogs and reader.index.catalog_count > 0
    for i in chunks:
        e = reader.entry(i)
        if e.in_parent:
            continue
        if members:
            yield e.offset, e.length
        if with_catalog:
            c = reader.index.catalog(i)
            yield c.offset, c.length


def held_ranges(reader: ArchiveReader, chain: ParentChain, holder: ArchiveReader,
                chunks: range, members: bool, catalogs: bool) -> Iterator[tuple[int, int]]:
    """The same for one parent of an incremental: the members of `chunks` it holds. A chunk
    the chain cannot place ends the plan: the reader meets the error itself."""
    for i in chunks:
        if not reader.entry(i).in_parent:
            continue
        try:
            h, seq = chain.locate(i)
        except DsBackupError:
            return
        if h is not holder:
            continue
        if members:
            e = h.entry(seq)
            yield e.offset, e.length
        if catalogs and seq < h.index.catalog_count:
            c = h.index.catalog(seq)
            yield c.offset, c.length
