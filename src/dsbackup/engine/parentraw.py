"""The key and value bytes (`raw_bytes`, docs/FORMAT.md §7) of chunks an incremental refers
to in its parent chain: no index field holds them, so they are read from the chunks — or, when
that reads fewer, from the parent's summary total less the chunks not wanted.

Used for a flatfs incremental's clean chunks (dsbackup.engine.flatfs_incremental) and for the
references below a resumed incremental's cut (dsbackup.engine.resume, §11.5)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from dsbackup._ext.framing import scan_payload


def marks(n: int, seqs: Any = ()) -> bytearray:
    """A mark per parent chunk (`n` of them), set for `seqs`."""
    out = bytearray(n)
    if len(seqs):
        np.frombuffer(out, np.uint8)[np.asarray(seqs, np.int64)] = 1
    return out


def raw_bytes_of(parent: Any, wanted: bytearray, *, known: bytearray | None = None,
                 known_raw: int = 0, threads: int = 1) -> int:
    """Σ raw_bytes of the parent's chunks marked in `wanted`: those chunks read (each through
    the chain, checked), or the parent's total less `known_raw` (the raw bytes of the chunks
    marked in `known`, disjoint from `wanted`) less the other chunks read — whichever reads
    fewer chunks."""
    w = np.frombuffer(wanted, np.uint8)
    read = np.flatnonzero(w)
    total = (parent.summary or {}).get("raw_bytes")
    if isinstance(total, int):
        rest = w == 0
        if known is not None:
            rest &= np.frombuffer(known, np.uint8) == 0
        others = np.flatnonzero(rest)
        if len(others) < len(read):
            return total - known_raw - _read(parent, others, threads)
    return _read(parent, read, threads)


def _read(parent: Any, seqs: np.ndarray, threads: int) -> int:
    if not len(seqs):
        return 0

    def raw(j: int) -> int:
        return scan_payload(parent.read_chunk(j)).raw_bytes

    if threads <= 1 or len(seqs) == 1:
        return sum(raw(int(j)) for j in seqs)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return sum(pool.map(raw, (int(j) for j in seqs)))
