"""Listing an archive's keys: from the key catalog when the archive has one (no value is
inflated), else by decoding the chunks' keys."""

from __future__ import annotations

import struct
from collections.abc import Iterator

from dsbackup._ext.checksum import xxh3_64
from dsbackup._ext.framing import FramingError, decode_keys_sizes
from dsbackup.archive.format import read_uvarint
from dsbackup.archive.index import ChunkEntry
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.readplan import plan_chunk_reads
from dsbackup.archive.verify import check_layout, check_payload
from dsbackup.errors import IntegrityError

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


def parse_catalog(data: memoryview, where: str) -> Iterator[tuple[bytes, int, int]]:
    """(key, value size, value XXH3) for each record of a catalog (docs/FORMAT.md §8)."""
    pos, n = 0, len(data)
    while pos < n:
        klen, pos = read_uvarint(data, pos, where)
        if klen < 1 or pos + klen > n:
            raise IntegrityError(f"{where}: key length {klen} at offset {pos} is out of bounds")
        key = bytes(data[pos : pos + klen])
        pos += klen
        vlen, pos = read_uvarint(data, pos, where)
        if pos + 8 > n:
            raise IntegrityError(f"{where}: truncated value digest at offset {pos}")
        (vx,) = _U64.unpack_from(data, pos)
        pos += 8
        yield key, vlen, vx


def _check_catalog_keys(reader: ArchiveReader, i: int, e: ChunkEntry,
                        rows: list[tuple[bytes, int, int]]) -> None:
    """What verify checks of a chunk's keys, for its catalog: the index's count, keys
    strictly increasing from its first to its last key, and its key digest."""
    keys = [k for k, _, _ in rows]
    bad = len(keys) != e.records or not keys or keys[0] != e.first_key \
        or keys[-1] != e.last_key or any(a >= b for a, b in zip(keys, keys[1:]))
    if not bad:
        bad = xxh3_64(b"".join(_U32.pack(len(k)) + k for k in keys)) != e.keys_xxh3
    if bad:
        raise IntegrityError(f"{reader.path}: chunk {i} {e.key_range}: catalog keys disagree "
                             "with the index (count, order, key range or key digest)", chunk=i)


def iter_listing(reader: ArchiveReader, start: bytes = b"", end: bytes | None = None,
                 ) -> Iterator[tuple[bytes, int, int | None]]:
    """(key, value size, value XXH3 or None) for keys in [start, end), in key order.
    The index's layout is checked at once (before the caller prints anything) and each
    chunk's keys before any of them is yielded (as verify checks them). A paged index reads
    only the pages holding [start, end) (docs/FORMAT.md §11.3), caching two at a time
    (``sequential``)."""
    reader.index.sequential()
    check_layout(reader, start, end)
    return _rows(reader, start, end)


def _rows(reader: ArchiveReader, start: bytes, end: bytes | None,
          ) -> Iterator[tuple[bytes, int, int | None]]:
    use_catalog = reader.index.catalog_count > 0
    chunks = reader.index.chunks_overlapping(start, end)
    # the S3 source fetches the catalogs (or chunks) listed, not the archive
    plan_chunk_reads(reader, chunks, members=not use_catalog, catalogs=use_catalog)
    for i in chunks:
        where = f"{reader.path}: chunk {i}"
        e = reader.entry(i)
        if use_catalog:
            cat = list(parse_catalog(reader.read_catalog(i), where))
            _check_catalog_keys(reader, i, e, cat)
            rows: Iterator[tuple[bytes, int, int | None]] = iter(cat)
        else:
            # reused buffers: the keys and sizes below are copies, the payload is not kept
            payload = reader.read_chunk(i, into=reader.reused_payload)
            check_payload(reader.path, i, e, payload)
            try:
                keys, sizes = decode_keys_sizes(payload)
            except FramingError as exc:
                raise IntegrityError(f"{where}: {exc}", chunk=i) from None
            rows = ((k, s, None) for k, s in zip(keys, sizes))
        for k, s, x in rows:
            if k < start:
                continue
            if end is not None and k >= end:
                return
            yield k, s, x
