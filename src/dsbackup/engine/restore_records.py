"""A chunk's records for a restore: read, checked before any of them is written (count, keys
in order and in the chunk's range, digests), decoded, and cut to the restore's key range and
patterns. Run in the restore's inflate threads (restore.py, restore_staged.py)."""

from __future__ import annotations

import bisect

from dsbackup._ext.framing import FramingError, decode_records
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.verify import check_payload
from dsbackup.errors import IntegrityError
from dsbackup.patterns import KeyMatcher


def chunk_records(reader: ArchiveReader, i: int, start: bytes, end: bytes | None,
                  matcher: KeyMatcher | None) -> tuple[list[bytes], list[bytes]]:
    """Keys and values of chunk `i` in `[start, end)` (end None: no bound) that `matcher`
    matches (None: all); IntegrityError naming the chunk when it fails a check."""
    # decoded in this thread's reused buffer: decode_records copies keys and values out
    payload = reader.read_chunk(i, into=reader.reused_payload)
    e = reader.entry(i)
    check_payload(reader.path, i, e, payload)  # keys in range, in order, digest
    try:
        keys, values = decode_records(payload, e.records)
    except FramingError as exc:
        raise IntegrityError(f"{reader.path}: chunk {i} {e.key_range}: {exc}",
                             chunk=i) from None
    if start or end is not None:
        lo = bisect.bisect_left(keys, start)
        hi = len(keys) if end is None else bisect.bisect_left(keys, end)
        keys, values = keys[lo:hi], values[lo:hi]
    if matcher is not None:
        keep = [j for j, k in enumerate(keys) if matcher.match(k)]
        keys = [keys[j] for j in keep]
        values = [values[j] for j in keep]
    return keys, values
